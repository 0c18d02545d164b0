"""The two CLIs end to end on a synthetic store: outputs, MLflow, and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ensemble_search import optimize, predict
from ensemble_search.methods import METHODS
from tests.ensemble_fixtures import make_sweep, write_candidate


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One sweep, optimized then predicted once (MLflow start-up is the slow part)."""
    sw = make_sweep(tmp_path_factory.mktemp("sweep"), skills=(2.0, 1.0, 0.5, 1.5), n=90)
    assert optimize.main([str(sw.config), "--quiet"]) == 0
    assert predict.main([str(sw.config), "--quiet"]) == 0
    return sw


def _errors(capsys, prog):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]


def test_optimize_writes_every_output(done):
    out = done.sweep_dir / "ensemble"
    for name in ("ensemble.json", "candidates.csv", "methods.csv", "correlation.csv",
                 "correlation.png", "error_overlap.csv", "error_overlap.png", "model_acc.png"):
        assert (out / name).stat().st_size > 0, name
    spec = json.loads((out / "ensemble.json").read_text())
    honest = {m: spec["methods"][m]["honest_log_loss"] for m in ("mean", "greedy", "optimized",
                                                                 "pruned")}
    assert spec["method"] == min(honest, key=honest.get)  # auto picks by the honest estimate
    assert sum(c["weight"] for c in spec["candidates"]) == pytest.approx(1.0)
    for key in ("ensemble_oof_acc", "ensemble_honest_acc", "mean_honest_acc",
                "best_single_honest_acc", "ensemble_oof_log_loss", "ensemble_honest_log_loss"):
        assert 0 <= spec["scores"][key] < 10, key
    cands = pd.read_csv(out / "candidates.csv")
    assert list(cands["candidate_id"]) == done.ids
    acc0 = (done.probs[0].argmax(axis=1) == done.targets).mean()
    assert cands.loc[0, "oof_acc"] == pytest.approx(acc0, abs=1e-6)
    corr = pd.read_csv(out / "correlation.csv", index_col=0).to_numpy()
    assert np.allclose(np.diag(corr), 1.0)
    assert np.allclose(corr, corr.T)


def test_optimize_and_predict_log_mlflow_runs(done):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{done.config.parent / 'mlflow.db'}")
    exp = client.get_experiment_by_name("t")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'ensemble'")
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"ensemble-optimize", "ensemble-predict"}
    opt = by_name["ensemble-optimize"]
    assert "ensemble_honest_acc" in opt.data.metrics
    assert opt.data.params["requested_method"] == "auto"
    arts = {a.path for a in client.list_artifacts(opt.info.run_id)}
    assert {"ensemble.json", "correlation.png", "model_acc.png"} <= arts
    arts = {a.path for a in client.list_artifacts(by_name["ensemble-predict"].info.run_id)}
    assert arts == {"submission.csv", "test_probs.npy"}


def test_predict_csv_matches_test_csv_row_for_row(done):
    out = done.sweep_dir / "ensemble"
    sub = pd.read_csv(out / "submission.csv")
    test = pd.read_csv(done.test_csv)
    assert list(sub.columns) == ["ID", "image_path", "target"]
    assert list(sub["ID"]) == list(range(len(test)))
    assert list(sub["image_path"]) == list(test["image_path"])
    spec = json.loads((out / "ensemble.json").read_text())
    expected = sum(c["weight"] * done.test_probs[done.ids.index(c["candidate_id"])].mean(axis=0)
                   for c in spec["candidates"])
    probs = np.load(out / "test_probs.npy")
    assert probs.dtype == np.float32 and probs.shape == expected.shape
    assert np.allclose(probs, expected, atol=1e-5)
    assert np.array_equal(sub["target"].to_numpy(), probs.argmax(axis=1))


def test_optimize_mlflow_unreachable_still_writes_files(tmp_path, capsys):
    sw = make_sweep(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    bad = tmp_path / "afile" / "mlflow.db"  # a database that cannot be created
    rc = optimize.main([str(sw.config), "--set", f"tracking_uri=sqlite:///{bad}",
                        "--set", "ensemble.method=greedy"])
    assert rc == 0
    assert "MLflow: NOT logged" in capsys.readouterr().out
    spec = json.loads((sw.sweep_dir / "ensemble" / "ensemble.json").read_text())
    assert spec["method"] == "greedy"


def _assert_nothing_written(sw, out=None):
    assert not (out or sw.sweep_dir / "ensemble").exists()
    assert not (sw.config.parent / "mlflow.db").exists()


def test_optimize_no_complete_candidate(tmp_path, capsys):
    sw = make_sweep(tmp_path, write=False)
    write_candidate(sw, 0, folds=[0, 1])
    assert optimize.main([str(sw.config)]) == 2
    (line,) = _errors(capsys, "ensemble_search.optimize")
    assert "no complete candidate" in line and "c00abcdef is missing fold(s) [2]" in line
    _assert_nothing_written(sw)


def test_optimize_named_candidate_missing_fold(tmp_path, capsys):
    sw = make_sweep(tmp_path)
    write_candidate(sw, 0, folds=[1, 2], cid="half12345")
    assert optimize.main([str(sw.config), "--candidates", f"{sw.ids[0]},half12345"]) == 2
    (line,) = _errors(capsys, "ensemble_search.optimize")
    assert "half12345 is missing fold(s) [0]" in line
    _assert_nothing_written(sw)


@pytest.mark.parametrize("case", ["nan", "sum", "classes", "keys"])
def test_optimize_bad_predictions(tmp_path, capsys, case):
    sw = make_sweep(tmp_path, skills=(1.0,))
    p = sw.probs[0].copy()
    if case == "nan":
        p[3, 0] = np.nan
        write_candidate(sw, 0, probs=p, cid="bad123456")
        want = "NaN"
    elif case == "sum":
        p[3] *= 0.5
        write_candidate(sw, 0, probs=p, cid="bad123456")
        want = "not 1"
    elif case == "classes":
        write_candidate(sw, 0, probs=np.full((len(p), 3), 1 / 3),
                        test_probs=np.full((12, 3), 1 / 3), cid="bad123456")
        want = "has 3"
    else:
        sw.keys = np.array([k.replace("train/", "other/") for k in sw.keys])
        write_candidate(sw, 0, cid="bad123456")  # rows not in the folds file: incomplete
        assert optimize.main([str(sw.config), "--candidates", "bad123456"]) == 2
        (line,) = _errors(capsys, "ensemble_search.optimize")
        assert "bad123456" in line and "no OOF prediction" in line
        _assert_nothing_written(sw)
        return
    assert optimize.main([str(sw.config)]) == 2
    (line,) = _errors(capsys, "ensemble_search.optimize")
    assert want in line and "bad123456" in line
    _assert_nothing_written(sw)


def test_optimize_bad_config_key(tmp_path, capsys):
    sw = make_sweep(tmp_path)
    assert optimize.main([str(sw.config), "--set", "ensemble.methd=greedy"]) == 2
    (line,) = _errors(capsys, "ensemble_search.optimize")
    assert "ensemble.methd" in line and str(sw.config) in line


def test_predict_test_csv_mismatch(done, tmp_path, capsys):
    short = tmp_path / "short.csv"
    pd.read_csv(done.test_csv).head(5).to_csv(short, index=False)
    out = tmp_path / "out"
    assert predict.main([str(done.config), "--test-csv", str(short), "--out", str(out)]) == 2
    (line,) = _errors(capsys, "ensemble_search.predict")
    assert str(short) in line and "5 rows" in line and "12" in line
    assert not out.exists()


def test_predict_ensemble_names_missing_candidate(done, tmp_path, capsys):
    spec = json.loads((done.sweep_dir / "ensemble" / "ensemble.json").read_text())
    spec["candidates"][0]["candidate_id"] = "gone12345"
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "out"
    assert predict.main([str(done.config), "--ensemble", str(path), "--out", str(out)]) == 2
    (line,) = _errors(capsys, "ensemble_search.predict")
    assert str(path) in line and "gone12345" in line
    assert not out.exists()


@pytest.mark.parametrize("case", ["missing-image", "no-weights"])
def test_predict_images_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    sw = make_sweep(tmp_path, skills=(1.0,))
    csv = tmp_path / "new.csv"
    pd.DataFrame({"image_path": ["gone.png"]}).to_csv(csv, index=False)
    if case == "missing-image":  # weights named but absent: the images are checked first
        write_candidate(sw, 0, weights_file="fold{k}.safetensors")
        want = ("gone.png", str(csv))
    else:
        want = ("saved no weights", str(sw.store.candidate_dir(sw.ids[0])))
    (tmp_path / "ensemble.json").write_text(json.dumps(
        {"candidates": [{"candidate_id": sw.ids[0], "weight": 1.0}]}))
    out = tmp_path / "out"
    rc = predict.main([str(sw.config), "--images", str(csv), "--out", str(out),
                       "--ensemble", str(tmp_path / "ensemble.json")])
    assert rc == 2
    (line,) = _errors(capsys, "ensemble_search.predict")
    assert all(w in line for w in want), line
    _assert_nothing_written(sw, out)


def test_cli_help_lists_defaults(capsys):
    helps = {}
    for mod in (optimize, predict):
        with pytest.raises(SystemExit) as e:
            mod.main(["--help"])
        assert e.value.code == 0
        helps[mod] = text = capsys.readouterr().out
        assert "configs/sweep.yaml" in text and "--set" in text and "--sweep" in text
    assert "--ensemble" in helps[predict] and "--images" in helps[predict]
    listed = {line.split()[0] for line in helps[optimize].split("ensemble.method")[-1]
              .splitlines()[1:] if line.strip()}
    assert listed == {"auto", *METHODS}  # the registry, one method a line
