"""The prediction store: round trip, atomic writes, and the completeness rule."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from sketchtune.errors import StoreError
from sketchtune.store import PredictionStore, keys_digest

KEYS = [f"train/c{i % 3}/img{i}.JPEG" for i in range(12)]
FOLDS = np.arange(12) % 3  # 3 folds of 4 rows


def write(store: PredictionStore, cid: str, fold: int, keys=None, n_folds: int = 3):
    rng = np.random.default_rng(fold)
    idx = np.flatnonzero(FOLDS == fold)
    keys = [KEYS[i] for i in idx] if keys is None else keys
    p = rng.dirichlet(np.ones(3), size=len(keys)).astype(np.float32)
    return store.write_fold(cid, fold, val_keys=keys, val_targets=np.arange(len(keys)) % 3,
                            val_probs=p, test_keys=["test/a.png", "test/b.png"], test_probs=p[:2],
                            manifest={"n_folds": n_folds, "metrics": {"val_acc": 0.5}})


def test_store_round_trip(tmp_path):
    store = PredictionStore(tmp_path)
    write(store, "abc", 1)
    f = store.read_fold("abc", 1)
    assert f.val_probs.dtype == np.float32 and f.val_probs.shape == (4, 3)
    assert f.test_probs.shape == (2, 3)
    assert list(f.val_keys) == [KEYS[i] for i in np.flatnonzero(FOLDS == 1)]
    assert f.manifest["candidate_id"] == "abc" and f.manifest["fold"] == 1
    assert f.manifest["num_classes"] == 3 and f.manifest["metrics"] == {"val_acc": 0.5}
    assert store.candidates() == ["abc"] and store.folds("abc") == [1]


def test_store_complete_only_when_folds_cover_every_row_once(tmp_path):
    store = PredictionStore(tmp_path)
    write(store, "abc", 0)
    write(store, "abc", 1)
    ok, why = store.completeness("abc", KEYS)
    assert not ok and "missing fold(s) [2]" in why
    write(store, "abc", 2)
    assert store.completeness("abc", KEYS)[0]


def test_store_incomplete_when_a_row_is_in_two_folds(tmp_path):
    store = PredictionStore(tmp_path)
    write(store, "abc", 0)
    write(store, "abc", 1)
    write(store, "abc", 2, keys=[KEYS[0], KEYS[2], KEYS[5], KEYS[8]])  # KEYS[0] is in fold 0
    ok, why = store.completeness("abc", KEYS)
    assert not ok and KEYS[0] in why


def test_store_incomplete_when_a_train_row_has_no_prediction(tmp_path):
    store = PredictionStore(tmp_path)
    for k in range(3):
        write(store, "abc", k)
    ok, why = store.completeness("abc", KEYS + ["train/c0/extra.JPEG"])
    assert not ok and "no OOF prediction" in why


def test_store_fold_without_manifest_is_not_finished(tmp_path):
    store = PredictionStore(tmp_path)
    js = write(store, "abc", 0)
    js.unlink()  # a crash between the array file and the manifest
    assert store.folds("abc") == [] and not store.has_fold("abc", 0)
    assert store.candidates() == []


def test_store_failed_write_leaves_no_file(tmp_path, monkeypatch):
    store = PredictionStore(tmp_path)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("sketchtune.fs.os.fsync", boom)  # the store writes through it
    with pytest.raises(StoreError, match="No space left"):
        write(store, "abc", 0)
    leftovers = list((tmp_path / "candidates").rglob("*"))
    assert [p for p in leftovers if p.is_file()] == []


def test_store_read_missing_fold_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="no fold 3"):
        PredictionStore(tmp_path).read_fold("abc", 3)


def test_store_refuses_pickled_arrays(tmp_path):
    store = PredictionStore(tmp_path)
    write(store, "abc", 0)
    npz = tmp_path / "candidates/abc/fold0.npz"
    np.savez(npz, val_keys=np.array([object()], dtype=object), val_targets=np.zeros(1),
             val_probs=np.zeros((1, 3)), test_probs=np.zeros((1, 3)))
    with pytest.raises(StoreError, match="unreadable"):
        store.read_fold("abc", 0)


def test_store_update_manifest_is_atomic_and_persistent(tmp_path):
    store = PredictionStore(tmp_path)
    write(store, "abc", 0)
    store.update_manifest("abc", 0, mlflow_run_id="r1")
    assert store.read_manifest("abc", 0)["mlflow_run_id"] == "r1"
    assert not list((tmp_path / "candidates/abc").glob("*.tmp"))


def test_store_oof_correct_is_argmax_equals_target_first_max_winning(tmp_path):
    store = PredictionStore(tmp_path)
    # Row 0: a tie between classes 0 and 1 goes to 0 (numpy's argmax), so target 0 is right
    # and target 1 wrong; row 2 is plainly right, row 3 plainly wrong.
    probs = np.array([[0.4, 0.4, 0.2], [0.4, 0.4, 0.2], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]],
                     dtype=np.float32)
    keys = ["a", "b", "c", "d"]
    store.write_fold("abc", 0, val_keys=keys, val_targets=np.array([0, 1, 2, 1]),
                     val_probs=probs, test_probs=probs[:1], test_keys=["t"], manifest={})
    store.write_fold("abc", 1, val_keys=["e"], val_targets=np.array([2]),
                     val_probs=probs[2:3], test_probs=probs[:1], test_keys=["t"],
                     manifest={})
    got_keys, correct = store.oof_correct("abc")
    assert got_keys.tolist() == ["a", "b", "c", "d", "e"]
    assert correct.tolist() == [True, False, True, False, True]
    assert store.oof_correct("abc", folds=[1])[1].tolist() == [True]
    assert store.oof_correct("nothing")[1].shape == (0,)


def test_store_records_the_test_images_it_predicted(tmp_path):
    store = PredictionStore(tmp_path)
    write(store, "abc", 0)
    f = store.read_fold("abc", 0)
    assert list(f.test_keys) == ["test/a.png", "test/b.png"]
    assert f.manifest["test_keys_sha256"] == keys_digest(["test/a.png", "test/b.png"])
    assert keys_digest(["test/b.png", "test/a.png"]) != f.manifest["test_keys_sha256"]


def test_store_fold_without_test_keys_reads_as_none(tmp_path):
    store = PredictionStore(tmp_path)
    write(store, "abc", 0)
    npz = tmp_path / "candidates/abc/fold0.npz"
    with np.load(npz) as z:  # a fold file written before test keys were recorded
        old = {k: z[k] for k in ("val_keys", "val_targets", "val_probs", "test_probs")}
    np.savez(npz, **old)
    store.update_manifest("abc", 0, test_keys_sha256=None)
    assert store.read_fold("abc", 0).test_keys is None


def test_store_refuses_test_keys_its_manifest_does_not_record(tmp_path):
    store = PredictionStore(tmp_path)
    write(store, "abc", 0)
    store.update_manifest("abc", 0, test_keys_sha256=keys_digest(["test/other.png"]))
    with pytest.raises(StoreError, match="test_keys_sha256"):
        store.read_fold("abc", 0)


@pytest.mark.parametrize("cut", [0, 100])
def test_store_zero_byte_or_truncated_fold_is_one_store_error(tmp_path, cut):
    store = PredictionStore(tmp_path)
    for k in range(3):
        write(store, "abc", k)
    npz = tmp_path / "candidates/abc/fold1.npz"
    npz.write_bytes(npz.read_bytes()[:cut])  # a copy cut short (BadZipFile) or empty (EOFError)
    with pytest.raises(StoreError, match=r"fold1\.npz: unreadable prediction file"):
        store.read_fold("abc", 1)
    with pytest.raises(StoreError, match=r"fold1\.npz: unreadable"):
        store.completeness("abc", KEYS)


def test_store_manifest_that_is_not_an_object_is_a_store_error(tmp_path):
    store = PredictionStore(tmp_path)
    write(store, "abc", 0)
    (tmp_path / "candidates/abc/fold0.json").write_text("[1, 2]\n")
    with pytest.raises(StoreError, match=r"fold0\.json: manifest must be a JSON object, not list"):
        store.read_manifest("abc", 0)


def test_store_files_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write(PredictionStore(tmp_path), "abc", 0)
    finally:
        os.umask(old)
    for f in (tmp_path / "candidates/abc").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f.name


@pytest.mark.parametrize("swap", ["candidates", "folds"])
def test_store_refuses_a_fold_whose_manifest_names_another_candidate_or_fold(tmp_path, swap):
    """Files copied between candidates (or folds) pass every other check and would mix two
    models' predictions into one OOF: the manifest's own candidate_id and fold must match."""
    store = PredictionStore(tmp_path)
    write(store, "aaa", 0)
    write(store, "bbb", 0)
    write(store, "aaa", 1)
    a0 = store.candidate_dir("aaa")
    src = store.candidate_dir("bbb") if swap == "candidates" else a0
    k = 0 if swap == "candidates" else 1
    for ext in ("npz", "json"):
        (a0 / f"fold0.{ext}").write_bytes((src / f"fold{k}.{ext}").read_bytes())
    want = "candidate_id='bbb'" if swap == "candidates" else "fold=1"
    with pytest.raises(StoreError, match=want) as err:
        store.read_fold("aaa", 0)
    assert str(a0 / "fold0.json") in str(err.value)
    assert store.read_fold("aaa", 1).manifest["fold"] == 1  # the untouched fold still reads


@pytest.mark.parametrize(("edit", "want"), [
    ({"val_probs": np.full(4, 0.5, dtype=np.float32)}, r"val_probs has shape \(4,\), not"),
    ({"test_probs": np.full((2, 3, 1), 0.5, dtype=np.float32)},
     r"test_probs has shape \(2, 3, 1\), not"),
    ({"val_targets": np.array(["a", "b", "c", "d"])}, "val_targets holds <U1, not integer"),
    ({"val_probs": np.array([["0.5"] * 3] * 4)}, "val_probs holds <U3, not floating"),
    ({"val_keys": np.array(["only_one"])}, "1 val_keys, 4 val_targets and 4 val_probs rows"),
])
def test_store_refuses_arrays_of_the_wrong_shape_or_kind(tmp_path, edit, want):
    """A fold file edited or written by something else: one StoreError naming it, not an
    IndexError or a ValueError from int() deep in the ensemble code."""
    store = PredictionStore(tmp_path)
    write(store, "abc", 0)
    npz = tmp_path / "candidates/abc/fold0.npz"
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(npz, **{**arrays, **edit})
    with pytest.raises(StoreError, match=want) as err:
        store.read_fold("abc", 0)
    assert str(npz) in str(err.value)


@pytest.mark.parametrize("value", [7, True, "3"])
def test_store_refuses_a_manifest_whose_class_count_is_not_the_arrays(tmp_path, value):
    """`predict --images` sizes the model's head from the manifest's num_classes."""
    store = PredictionStore(tmp_path)
    write(store, "abc", 0)
    store.update_manifest("abc", 0, num_classes=value)
    with pytest.raises(StoreError, match=f"its manifest says num_classes={value!r} but "
                                         "val_probs has 3 and test_probs 3 classes"):
        store.read_fold("abc", 0)
