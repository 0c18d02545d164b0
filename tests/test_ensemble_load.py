"""Loading candidates from the prediction store: alignment, completeness and validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ensemble_search.comparison import compare_methods
from ensemble_search.config import EnsembleConfig
from ensemble_search.load import (
    load_fold_test_probs,
    load_oof,
    load_test_probs,
    read_test_keys,
    read_train_rows,
)
from sketchtune.config import load_config
from sketchtune.errors import DataError, EnsembleError
from tests.ensemble_fixtures import make_sweep, write_candidate


def _rows(sw):
    return read_train_rows(load_config(sw.config).data)


def test_load_oof_aligns_rows_to_folds_file(tmp_path):
    sw = make_sweep(tmp_path)
    oof = load_oof(sw.store, _rows(sw))
    assert oof.candidate_ids == sw.ids
    assert np.array_equal(oof.keys, sw.keys)
    assert np.array_equal(oof.targets, sw.targets)
    assert np.array_equal(oof.folds, sw.folds)
    assert np.array_equal(oof.probs, sw.probs)
    assert oof.names[0] == "test_resnet-c00abc"
    test = load_test_probs(sw.store, oof.candidate_ids)
    assert np.allclose(test, sw.test_probs.mean(axis=1), atol=1e-6)


def test_load_oof_skips_incomplete_candidate(tmp_path):
    sw = make_sweep(tmp_path)
    write_candidate(sw, 0, folds=[0], cid="partial123")
    oof = load_oof(sw.store, _rows(sw))
    assert "partial123" not in oof.candidate_ids
    assert "fold(s) [1, 2]" in oof.skipped["partial123"]


def test_load_oof_named_incomplete_candidate_names_it_and_fold(tmp_path):
    sw = make_sweep(tmp_path)
    write_candidate(sw, 0, folds=[0, 2], cid="partial123")
    with pytest.raises(EnsembleError, match=r"partial123 is missing fold\(s\) \[1\]"):
        load_oof(sw.store, _rows(sw), ["partial123"])


def test_load_oof_without_folds_file_uses_train_csv(tmp_path):
    sw = make_sweep(tmp_path)
    sw.folds_csv.unlink()
    oof = load_oof(sw.store, _rows(sw))
    assert np.array_equal(oof.folds, sw.folds)  # taken from the store itself
    assert np.array_equal(oof.targets, sw.targets)


@pytest.mark.parametrize("bad", ["nan", "sum", "negative"])
def test_load_oof_rejects_invalid_probabilities(tmp_path, bad):
    sw = make_sweep(tmp_path, write=False)
    p = sw.probs[0].copy()
    if bad == "nan":
        p[5, 1] = np.nan
    elif bad == "sum":
        p[5] *= 1.1
    else:
        p[5, 0], p[5, 1] = -0.1, p[5, 1] + 0.1
    write_candidate(sw, 0, probs=p)
    with pytest.raises(EnsembleError, match=r"c00abcdef/fold\d\.npz val_probs: .*row"):
        load_oof(sw.store, _rows(sw))


def test_load_oof_rejects_different_class_counts(tmp_path):
    sw = make_sweep(tmp_path, skills=(1.0,))
    other = np.full((len(sw.keys), 5), 0.2, dtype=np.float32)
    write_candidate(sw, 0, probs=other, test_probs=np.full((12, 5), 0.2), cid="five12345")
    want = r"five12345/fold0\.npz: val_probs has 5 classes but .*c00abcdef/fold0\.npz has 4"
    with pytest.raises(EnsembleError, match=want):
        load_oof(sw.store, _rows(sw))


def test_load_oof_rejects_candidate_on_other_folds(tmp_path):
    sw = make_sweep(tmp_path, skills=(1.0,))
    sw.folds = np.roll(sw.folds, 1)  # same rows, another fold assignment
    write_candidate(sw, 0, cid="refold123")
    with pytest.raises(EnsembleError, match="refold123: fold .* puts in fold"):
        load_oof(sw.store, _rows(sw))


def test_load_oof_no_complete_candidate(tmp_path):
    sw = make_sweep(tmp_path, write=False)
    write_candidate(sw, 0, folds=[0])
    with pytest.raises(EnsembleError, match="no complete candidate.*c00abcdef is missing fold"):
        load_oof(sw.store, _rows(sw))


def test_load_test_probs_is_fold_mean_and_names_missing_fold(tmp_path):
    sw = make_sweep(tmp_path)
    got = load_test_probs(sw.store, sw.ids[::-1])
    assert np.allclose(got, sw.test_probs[::-1].mean(axis=1), atol=1e-6)
    (sw.store.candidate_dir(sw.ids[1]) / "fold1.json").unlink()
    with pytest.raises(EnsembleError, match=r"c01abcdef is missing fold\(s\) \[1\]"):
        load_test_probs(sw.store, sw.ids)


def test_load_test_probs_matches_rows_by_image_path_not_position(tmp_path):
    sw = make_sweep(tmp_path)
    order = np.random.default_rng(1).permutation(len(sw.test_keys))
    got = load_test_probs(sw.store, sw.ids, sw.test_keys[order])
    assert np.allclose(got, sw.test_probs.mean(axis=1)[:, order], atol=1e-6)
    # './x' and 'x' name one image
    dotted = ["./" + k for k in sw.test_keys]
    assert np.allclose(load_test_probs(sw.store, sw.ids, dotted), sw.test_probs.mean(axis=1),
                       atol=1e-6)


def test_load_test_probs_names_images_without_prediction_and_the_command(tmp_path):
    sw = make_sweep(tmp_path)
    keys = [*sw.test_keys, "test/new1.png", "test/new2.png"]
    with pytest.raises(EnsembleError, match=r"t\.csv: 2 of 14 rows have no stored prediction "
                       r"\(first: 'test/new1.png', 'test/new2.png'.*--images t\.csv"):
        load_test_probs(sw.store, sw.ids, keys, source="t.csv")


def test_load_test_probs_refuses_folds_that_predicted_other_images(tmp_path):
    sw = make_sweep(tmp_path, skills=(1.0,))
    other = np.array([*sw.test_keys[:-1], "test/other.png"])
    write_candidate(sw, 0, folds=[1], test_keys=other)
    with pytest.raises(EnsembleError, match=r"fold1\.npz: predicted other test images than "
                                            r"fold 0"):
        load_test_probs(sw.store, sw.ids, sw.test_keys[:-1])


def test_load_test_probs_refuses_fold_written_without_test_keys(tmp_path):
    sw = make_sweep(tmp_path, skills=(1.0,))
    npz = sw.store.candidate_dir(sw.ids[0]) / "fold2.npz"
    with np.load(npz) as z:
        old = {k: z[k] for k in ("val_keys", "val_targets", "val_probs", "test_probs")}
    np.savez(npz, **old)
    sw.store.update_manifest(sw.ids[0], 2, test_keys_sha256=None)
    with pytest.raises(EnsembleError, match=r"fold2\.npz: written before fold files recorded "
                       r"their test image_paths.*--images"):
        load_test_probs(sw.store, sw.ids, sw.test_keys, source="t.csv")


def test_load_fold_test_probs_keeps_each_fold_model_aligned_by_image_path(tmp_path):
    sw = make_sweep(tmp_path)
    order = np.random.default_rng(2).permutation(len(sw.test_keys))
    ids = [sw.ids[2], sw.ids[0]]
    got = load_fold_test_probs(sw.store, ids, sw.test_keys[order], n_folds=3)
    assert got.dtype == np.float32 and got.shape == (2, 3, len(order), 4)
    assert np.array_equal(got, sw.test_probs[[2, 0]][:, :, order])
    # averaged over folds, it is what predict reads
    assert np.allclose(got.mean(axis=1), load_test_probs(sw.store, ids, sw.test_keys[order]),
                       atol=1e-6)


def test_load_fold_test_probs_refuses_folds_other_than_the_oof_folds(tmp_path):
    sw = make_sweep(tmp_path, skills=(1.0,))
    with pytest.raises(EnsembleError, match=r"c00abcdef is missing fold\(s\) \[3\]"):
        load_fold_test_probs(sw.store, sw.ids, sw.test_keys, n_folds=4)
    with pytest.raises(EnsembleError, match=r"has folds \[0, 1, 2\] but the OOF rows have "
                                            r"folds 0\.\.1"):
        load_fold_test_probs(sw.store, sw.ids, sw.test_keys, n_folds=2)


def test_load_fold_test_probs_refuses_fold_written_without_test_keys(tmp_path):
    sw = make_sweep(tmp_path, skills=(1.0,))
    npz = sw.store.candidate_dir(sw.ids[0]) / "fold1.npz"
    with np.load(npz) as z:
        old = {k: z[k] for k in ("val_keys", "val_targets", "val_probs", "test_probs")}
    np.savez(npz, **old)
    sw.store.update_manifest(sw.ids[0], 1, test_keys_sha256=None)
    with pytest.raises(EnsembleError, match=r"fold1\.npz: written before fold files recorded"):
        load_fold_test_probs(sw.store, sw.ids, sw.test_keys, n_folds=3)


def test_read_train_rows_refuses_train_csv_relabelled_after_the_sweep(tmp_path):
    sw = make_sweep(tmp_path)
    train = pd.read_csv(sw.folds_csv.parent / "train.csv")
    train.loc[3, "target"] = (train.loc[3, "target"] + 1) % 4  # a consistent relabelling:
    train.loc[3, "class_name"] = f"c{train.loc[3, 'target']}"  # another class, by both
    train.to_csv(sw.folds_csv.parent / "train.csv", index=False)
    want = (f"image 'train/0003.png' has target {(sw.targets[3] + 1) % 4} but "
            f".*folds.csv .* has {sw.targets[3]}; 1 row")
    with pytest.raises(EnsembleError, match=want):
        _rows(sw)


def test_load_oof_names_both_labels_when_stored_target_differs_from_train_csv(tmp_path):
    sw = make_sweep(tmp_path, skills=(1.0,))
    sw.folds_csv.unlink()
    train = pd.read_csv(sw.folds_csv.parent / "train.csv")
    train.loc[5, "target"] = (train.loc[5, "target"] + 2) % 4
    train.loc[5, "class_name"] = f"c{train.loc[5, 'target']}"
    train.to_csv(sw.folds_csv.parent / "train.csv", index=False)
    want = (rf"image 'train/0005\.png' has target {sw.targets[5]} in fold {sw.folds[5]}'s "
            rf"predictions but {(sw.targets[5] + 2) % 4} in .*train\.csv")
    with pytest.raises(EnsembleError, match=want):
        load_oof(sw.store, _rows(sw))


def test_load_test_probs_refuses_a_fold_beyond_the_manifests_n_folds(tmp_path):
    """A stale fold 3 of a 3-fold candidate would be averaged in as a fourth fold model."""
    sw = make_sweep(tmp_path, skills=(1.0,))
    rows = np.flatnonzero(sw.folds == 0)
    sw.store.write_fold(sw.ids[0], 3, val_keys=sw.keys[rows], val_targets=sw.targets[rows],
                        val_probs=sw.probs[0][rows], test_keys=sw.test_keys,
                        test_probs=sw.test_probs[0, 0], manifest={"n_folds": 3})
    with pytest.raises(EnsembleError, match=r"c00abcdef has fold\(s\) \[3\] beyond its 3 folds"):
        load_test_probs(sw.store, sw.ids, sw.test_keys)


def test_read_test_keys_refuses_a_header_only_test_csv(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text("image_path\n")
    with pytest.raises(DataError, match=f"{path}: no rows"):
        read_test_keys(path)


def test_views_are_correlated_candidates_and_a_copy_cannot_raise_the_honest_estimate(tmp_path):
    """A view of a candidate (written as the trial writes one: its manifest names the view and
    its base) whose predictions copy the candidate's: optimize shows the pair as one base with
    error correlation 1, `pruned` keeps only one of them, and every method that selects
    (greedy, pruned, best_single) gets the very same honest estimate with the copy as
    without it: a view from the same fold model adds no information, so it cannot add
    optimism either."""
    sw = make_sweep(tmp_path, skills=(2.0, 1.0, 0.5), n=90)
    base = sw.ids[1]
    copy = write_candidate(sw, 1, cid=f"{base}-hflip",
                           manifest={"base_candidate": base, "view": "hflip", "weights": "raw"})
    cfg = EnsembleConfig()
    with_copy = compare_methods(load_oof(sw.store, _rows(sw)), cfg)
    without = compare_methods(load_oof(sw.store, _rows(sw), candidate_ids=sw.ids), cfg)
    table = with_copy.candidates.set_index("candidate_id")
    assert table.loc[copy, "base_candidate"] == table.loc[base, "base_candidate"] == base
    assert table.loc[copy, "view"] == "hflip" and table.loc[copy, "name"].endswith("-hflip")
    j, c = list(table.index).index(base), list(table.index).index(copy)
    assert with_copy.diversity[j, c] == pytest.approx(1.0)
    assert with_copy.correlation[j, c] == pytest.approx(1.0)
    assert with_copy.results["pruned"].weights[c] == 0.0
    for name in ("greedy", "pruned", "best_single"):
        a, b = with_copy.results[name].honest, without.results[name].honest
        assert (a.acc, a.fold_acc) == (b.acc, b.fold_acc), name
        assert a.log_loss == pytest.approx(b.log_loss, abs=1e-12), name


def test_a_view_whose_fold_holds_another_folds_rows_is_refused(tmp_path):
    # The honest estimate scores fold k's rows with weights fitted without them; that holds
    # for a view only if its fold-k rows came from fold k's model. A view written from the
    # wrong fold's model (its rows in another fold's file) is refused, naming it.
    sw = make_sweep(tmp_path, skills=(1.0, 0.5))
    sw.folds = (sw.folds + 1) % 3
    write_candidate(sw, 0, cid=f"{sw.ids[0]}-scale",
                    manifest={"base_candidate": sw.ids[0], "view": "scale"})
    with pytest.raises(EnsembleError, match=rf"{sw.ids[0]}-scale: fold .* puts in fold"):
        load_oof(sw.store, _rows(sw))
