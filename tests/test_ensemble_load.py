"""Loading candidates from the prediction store: alignment, completeness and validation."""

from __future__ import annotations

import numpy as np
import pytest

from ensemble_search.load import EnsembleError, load_oof, load_test_probs, read_train_rows
from sketchtune.config import load_config
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
