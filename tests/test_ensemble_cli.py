"""The two CLIs end to end on a synthetic store: outputs, MLflow, and every bad input."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import shutil
import stat

import numpy as np
import pandas as pd
import pytest

from ensemble_search import optimize, predict
from ensemble_search.comparison import ESTIMATE_SCORES
from ensemble_search.methods import METHODS
from tests.ensemble_fixtures import make_sweep, sweep_from_synthetic, write_candidate
from tests.synthetic_probs import make_fold_probs


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One sweep, optimized then predicted once (MLflow start-up is the slow part), on no
    MLflow store yet: the first run creates it."""
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
                 "correlation.png", "error_overlap.csv", "error_overlap.png", "model_acc.png",
                 "error_correlation.csv", "error_correlation.png"):
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
    errs = pd.read_csv(out / "error_correlation.csv", index_col=0).to_numpy()
    wrong = done.probs.argmax(axis=2) != done.targets  # (M, N)
    assert np.allclose(errs, np.corrcoef(wrong.astype(float)), atol=1e-5)


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


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, _mlflow_template):
    """A store of synthetic predictions whose test labels are known, optimized and predicted:
    (sweep, test labels, optimize's stdout). It tracks in an empty MLflow store copied from
    the session's (conftest's mlflow_db); `done` proves optimize's first run without one."""
    syn = make_fold_probs(n=3000, n_test=2000, classes=20, candidates=3, seed=3)
    sw, test_y = sweep_from_synthetic(tmp_path_factory.mktemp("synthetic"), syn)
    shutil.copyfile(_mlflow_template, sw.config.parent / "mlflow.db")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert optimize.main([str(sw.config)]) == 0
    assert predict.main([str(sw.config), "--quiet"]) == 0
    return sw, test_y, out.getvalue()


def _mlflow_metrics(sw, run_name: str) -> dict[str, float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{sw.config.parent / 'mlflow.db'}")
    exp = client.get_experiment_by_name("t")
    (run,) = client.search_runs([exp.experiment_id],
                                filter_string=f"attributes.run_name = '{run_name}'")
    return run.data.metrics


def test_optimize_submission_estimate_interval_holds_the_true_test_accuracy(synthetic):
    sw, test_y, _ = synthetic
    out = sw.sweep_dir / "ensemble"
    spec = json.loads((out / "ensemble.json").read_text())
    acc, low, high = (spec["scores"][k] for k in ESTIMATE_SCORES)
    assert all(math.isfinite(v) for v in (acc, low, high))
    assert 0 <= low < acc < high <= 1
    sub = pd.read_csv(out / "submission.csv")
    assert list(sub["image_path"]) == list(sw.test_keys)
    true = float((sub["target"].to_numpy() == test_y).mean())
    assert low <= true <= high
    est = spec["submission_estimate"]
    assert est["available"] and est["method"] == spec["method"]
    assert (est["acc"], est["low"], est["high"]) == (acc, low, high)
    assert est["n_test"] == len(test_y) and est["n_folds"] == 5 and est["level"] == 0.95
    assert est["pool_low"] <= acc <= est["pool_high"]
    assert acc == pytest.approx(est["honest"] + est["gain"], abs=1e-12)
    # The honest term is the chosen method's own nested estimate, fold by fold.
    chosen = spec["methods"][spec["method"]]
    assert est["honest"] == pytest.approx(np.mean(chosen["honest_fold_acc"]), abs=1e-12)


def test_optimize_headline_is_the_submission_estimate(synthetic):
    sw, _, stdout = synthetic
    est = json.loads((sw.sweep_dir / "ensemble" / "ensemble.json").read_text())[
        "submission_estimate"]
    first = stdout.splitlines()[0]
    sign = "+" if est["gain"] >= 0 else "-"
    assert first == (f"expected test accuracy of the submission: {est['acc']:.3f} (95 % "
                     f"interval {est['low']:.3f}-{est['high']:.3f}; honest single-fold "
                     f"estimate {est['honest']:.3f} {sign} averaging gain "
                     f"{abs(est['gain']):.3f})")


def test_optimize_logs_the_submission_estimate_to_mlflow(synthetic):
    sw, _, _ = synthetic
    scores = json.loads((sw.sweep_dir / "ensemble" / "ensemble.json").read_text())["scores"]
    metrics = _mlflow_metrics(sw, "ensemble-optimize")
    for key in ESTIMATE_SCORES:
        assert metrics[key] == pytest.approx(scores[key]), key


@pytest.mark.parametrize("case", ["fold-without-test-keys", "test-csv-edited"])
@pytest.mark.usefixtures("mlflow_db")
def test_optimize_without_test_predictions_warns_once_and_writes_nulls(tmp_path, capsys, caplog,
                                                                      case):
    sw = make_sweep(tmp_path)
    if case == "fold-without-test-keys":  # a store written before folds recorded test_keys
        npz = sw.store.candidate_dir(sw.ids[0]) / "fold2.npz"
        with np.load(npz) as z:
            old = {k: z[k] for k in ("val_keys", "val_targets", "val_probs", "test_probs")}
        np.savez(npz, **old)
        sw.store.update_manifest(sw.ids[0], 2, test_keys_sha256=None)
        says = "fold2.npz: written before fold files recorded their test image_paths"
    else:  # an image the sweep never predicted
        test = pd.read_csv(sw.test_csv)
        pd.concat([test, pd.DataFrame({"image_path": ["test/new.png"]})]).to_csv(
            sw.test_csv, index=False)
        says = "1 of 13 rows have no stored prediction"
    assert optimize.main([str(sw.config), "--set", "ensemble.method=mean"]) == 0
    out, err = capsys.readouterr()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "no submission estimate" in warnings[0]
    assert says in warnings[0] and "\n" not in warnings[0]
    assert "error" not in err
    assert out.splitlines()[0] == ("expected test accuracy of the submission: not estimated "
                                   "(see the warning)")
    spec = json.loads((sw.sweep_dir / "ensemble" / "ensemble.json").read_text())
    assert [spec["scores"][k] for k in ESTIMATE_SCORES] == [None, None, None]
    est = spec["submission_estimate"]
    assert est["available"] is False and says in est["reason"]
    # The weights are written as ever: the estimate is evidence, not the decision.
    assert len(spec["candidates"]) == 3 and spec["method"] == "mean"
    assert (sw.sweep_dir / "ensemble" / "model_acc.png").stat().st_size > 0
    metrics = _mlflow_metrics(sw, "ensemble-optimize")
    assert "ensemble_honest_acc" in metrics
    assert not set(ESTIMATE_SCORES) & set(metrics)


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


def _expected_test_probs(sw, spec) -> np.ndarray:
    """(n_test, C): the ensemble of the stored test probabilities, in the fixture's order."""
    return sum(c["weight"] * sw.test_probs[sw.ids.index(c["candidate_id"])].mean(axis=0)
               for c in spec["candidates"])


@pytest.mark.parametrize("edit", ["reversed", "subset"])
def test_predict_matches_test_rows_by_image_path(done, tmp_path, edit):
    test = pd.read_csv(done.test_csv)
    rows = test.iloc[::-1] if edit == "reversed" else test.iloc[[7, 2, 5]]
    csv = tmp_path / "test.csv"
    rows.to_csv(csv, index=False)
    out = tmp_path / "out"
    assert predict.main([str(done.config), "--test-csv", str(csv), "--out", str(out),
                         "--quiet"]) == 0
    sub = pd.read_csv(out / "submission.csv")
    assert list(sub["image_path"]) == list(rows["image_path"])
    assert list(sub["ID"]) == list(range(len(rows)))
    spec = json.loads((done.sweep_dir / "ensemble" / "ensemble.json").read_text())
    expected = _expected_test_probs(done, spec)[rows.index.to_numpy()]
    assert np.allclose(np.load(out / "test_probs.npy"), expected, atol=1e-5)
    assert np.array_equal(sub["target"].to_numpy(), expected.argmax(axis=1))


def test_predict_refuses_test_images_without_prediction(done, tmp_path, capsys):
    csv = tmp_path / "test.csv"
    test = pd.read_csv(done.test_csv)
    pd.concat([test, pd.DataFrame({"image_path": ["test/new.png"]})]).to_csv(csv, index=False)
    out = tmp_path / "out"
    assert predict.main([str(done.config), "--test-csv", str(csv), "--out", str(out)]) == 2
    (line,) = _errors(capsys, "ensemble_search.predict")
    assert f"{csv}: 1 of 13 rows have no stored prediction (first: 'test/new.png'" in line
    assert f"python -m ensemble_search.predict --images {csv}" in line
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


def _spec_with(sw, **fields) -> dict:
    spec = {"method": "mean", "num_classes": 4, "temperature": 1.0,
            "candidates": [{"candidate_id": cid, "weight": 1.0 / len(sw.ids)} for cid in sw.ids]}
    for key, value in fields.items():
        if key.startswith("w"):  # w0=...: the first candidate's weight
            spec["candidates"][int(key[1:])]["weight"] = value
        elif key[0] == "t" and key[1:].isdigit():  # t0=...: its own temperature
            spec["candidates"][int(key[1:])]["temperature"] = value
        else:
            spec[key] = value
    return spec


@pytest.mark.parametrize(("fields", "want"), [
    ({"w0": float("nan")}, "candidates[0].weight: Input should be a finite number (got NaN)"),
    ({"w0": "0.25"}, 'candidates[0].weight: Input should be a valid number (got "0.25")'),
    ({"w0": None}, "candidates[0].weight: Input should be a valid number (got null)"),
    ({"w0": True}, "candidates[0].weight: Input should be a valid number (got true)"),
    ({"w0": -0.25, "w1": 0.75}, "candidates[0].weight: Input should be greater than or equal"),
    ({"w0": 0.9}, "candidates: weights must sum to 1 (within 1e-06) but sum to 1.4"),
    ({"temperature": 0}, "temperature: Input should be greater than 0 (got 0)"),
    ({"temperature": None}, "temperature: Input should be a valid number (got null)"),
    ({"temperature": "1.0"}, "temperature: Input should be a valid number"),
    ({"num_classes": 0}, "num_classes: Input should be greater than 0"),
    ({"num_classes": 4.5}, "num_classes: Input should be a valid integer"),
    ({"num_classes": None}, "num_classes: Input should be a valid integer (got null)"),
    ({"candidates": []}, "candidates: List should have at least 1 item"),
    # softmax(log p / T) overflows: every row NaN, a submission of class 0, exit 0
    ({"temperature": 1e-300}, "temperature: must be in [0.001, 1000]"),
    ({"temperature": 1e300}, "temperature: must be in [0.001, 1000]"),
    ({"t1": 1e-300}, "candidates[1].temperature: must be in [0.001, 1000]"),
    ({"t0": 0.0}, "candidates[0].temperature: Input should be greater than 0 (got 0.0)"),
    # A newer sketchtune's file may mean something else by the same fields.
    ({"format": 2}, "format: this version reads format 1, not 2"),
    ({"format": "1"}, 'format: Input should be a valid integer (got "1")'),
    ({"format": True}, "format: Input should be a valid integer (got true)"),
])
def test_predict_ensemble_json_schema(tmp_path, capsys, fields, want):
    sw = make_sweep(tmp_path, skills=(1.0, 0.5))
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(_spec_with(sw, **fields)))
    out = tmp_path / "out"
    assert predict.main([str(sw.config), "--ensemble", str(path), "--out", str(out)]) == 2
    (line,) = _errors(capsys, "ensemble_search.predict")
    assert f"{path}: {want}" in line, line
    assert not out.exists()


def test_predict_ensemble_json_refuses_a_misspelt_candidate_key(tmp_path, capsys):
    """A hand edit's `temprature: 2.0` was dropped: the candidate read uncalibrated, exit 0."""
    sw = make_sweep(tmp_path, skills=(1.0, 0.5))
    spec = _spec_with(sw)
    spec["candidates"][1].update(name="test_resnet-c01abc", temprature=2.0)
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "out"
    assert predict.main([str(sw.config), "--ensemble", str(path), "--out", str(out)]) == 2
    (line,) = _errors(capsys, "ensemble_search.predict")
    assert f"{path}: candidates[1].temprature: Extra inputs are not permitted" in line, line
    assert not out.exists()


@pytest.mark.usefixtures("mlflow_db")
def test_predict_ensemble_json_temperature_is_used_not_read_as_one(tmp_path):
    sw = make_sweep(tmp_path, skills=(1.0, 0.5))
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(_spec_with(sw, temperature=4.0)))
    assert predict.main([str(sw.config), "--ensemble", str(path), "--out",
                         str(tmp_path / "out"), "--quiet"]) == 0
    got = np.load(tmp_path / "out" / "test_probs.npy")
    mean = sw.test_probs.mean(axis=1).mean(axis=0)
    want = np.exp(np.log(mean) / 4.0)
    assert np.allclose(got, want / want.sum(axis=1, keepdims=True), atol=1e-5)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_predict_full_disk_mid_set_leaves_the_previous_set(done, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "submission.csv").write_text("old\n")
    (out / "test_probs.npy").write_text("old\n")
    (out / "ensemble.json").write_text("{}\n")  # optimize's file: must survive
    before = _snapshot(out)
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # the second file of the set
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    assert predict.main([str(done.config), "--out", str(out)]) == 2
    monkeypatch.undo()
    (line,) = _errors(capsys, "ensemble_search.predict")
    assert "No space left on device" in line and f"{out} is unchanged" in line
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no stage left beside it


@pytest.mark.parametrize("where", ["out-is-a-file", "folder-named-like-an-output"])
def test_predict_file_in_the_way_is_one_line_and_changes_nothing(done, tmp_path, capsys, where):
    out = tmp_path / "out"
    if where == "out-is-a-file":
        out.write_text("mine\n")
    else:
        out.mkdir()
        (out / "submission.csv").write_text("old\n")
        (out / "test_probs.npy").mkdir()  # the second file of the set is a folder
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert predict.main([str(done.config), "--out", str(out)]) == 2
    (line,) = _errors(capsys, "ensemble_search.predict")
    assert "in the way" in line
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    if where != "out-is-a-file":
        assert (out / "submission.csv").read_text() == "old\n"


def test_predict_keeps_optimize_files_and_writes_readable_modes(done, tmp_path):
    out = tmp_path / "out"
    assert optimize.main([str(done.config), "--out", str(out), "--quiet"]) == 0
    opt = _snapshot(out)
    old = os.umask(0o022)
    try:
        assert predict.main([str(done.config), "--out", str(out), "--quiet"]) == 0
    finally:
        os.umask(old)
    now = _snapshot(out)
    assert {k: now[k] for k in opt} == opt
    assert set(now) == set(opt) | {"submission.csv", "test_probs.npy"}
    for name in ("submission.csv", "test_probs.npy"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


@pytest.mark.parametrize("debug", [False, True])
def test_unexpected_error_is_one_line_exit_1_with_traceback_on_debug(tmp_path, capsys,
                                                                     monkeypatch, debug):
    sw = make_sweep(tmp_path, skills=(1.0, 0.5))

    def boom(*a, **k):
        raise RuntimeError("a bug\nsecond line")

    monkeypatch.setattr(optimize, "compare_methods", boom)
    monkeypatch.delenv("SKETCHTUNE_DEBUG", raising=False)
    rc = optimize.main([str(sw.config), *(["--debug"] if debug else [])])
    err = capsys.readouterr().err
    assert rc == 1
    assert "ensemble_search.optimize: unexpected RuntimeError: a bug (traceback: --debug" in err
    assert ("Traceback" in err) == debug
    _assert_nothing_written(sw)


@pytest.mark.parametrize("damage", ["zero-byte-npz", "truncated-npz", "manifest-a-list"])
def test_damaged_fold_files_are_one_line_exit_2(tmp_path, capsys, damage):
    sw = make_sweep(tmp_path, skills=(1.0, 0.5))
    d = sw.store.candidate_dir(sw.ids[1])
    if damage == "manifest-a-list":
        (d / "fold1.json").write_text("[]\n")
    else:
        npz = d / "fold1.npz"
        npz.write_bytes(b"" if damage == "zero-byte-npz" else npz.read_bytes()[:200])
    assert optimize.main([str(sw.config)]) == 2
    (line,) = _errors(capsys, "ensemble_search.optimize")
    assert str(d / "fold1.") in line
    _assert_nothing_written(sw)


def test_predict_images_reads_relative_paths_under_image_root(tmp_path, capsys):
    sw = make_sweep(tmp_path, skills=(1.0,))
    write_candidate(sw, 0, weights_file="fold{k}.safetensors")
    csv = tmp_path / "new.csv"
    pd.DataFrame({"image_path": ["gone.png"]}).to_csv(csv, index=False)
    (tmp_path / "ensemble.json").write_text(json.dumps(
        {"candidates": [{"candidate_id": sw.ids[0], "weight": 1.0}]}))
    root = tmp_path / "pictures"
    assert predict.main([str(sw.config), "--images", str(csv), "--image-root", str(root),
                         "--ensemble", str(tmp_path / "ensemble.json")]) == 2
    (line,) = _errors(capsys, "ensemble_search.predict")
    assert f"relative paths are read under {root} (--image-root)" in line
