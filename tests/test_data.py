"""CSV validation, image decoding, the decoded-image cache and the dataset."""

from __future__ import annotations

import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import sketchtune.images as images
from sketchtune.cache import load_images
from sketchtune.errors import DataError
from sketchtune.images import CachedImages, SketchDataset, read_image, resize_square
from sketchtune.tables import read_test_csv, read_train_csv, resolve_image_path
from tests.data_fixtures import make_dataset, sketch, write_csv

HEADER = "class_name,image_path,target\n"


@pytest.fixture
def ds(tmp_path: Path) -> tuple[Path, Path]:
    return make_dataset(tmp_path), tmp_path


def bad_train(tmp_path: Path, text: str, *, check_images: bool = False) -> str:
    csv = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(DataError) as err:
        read_train_csv(csv, tmp_path, check_images=check_images)
    msg = str(err.value)
    assert str(csv) in msg and "\n" not in msg
    return msg


# ---------------------------------------------------------------- CSV validation


def test_read_train_csv_accepts_valid_data(ds):
    csv, root = ds
    df = read_train_csv(csv, root)
    assert list(df.columns) == ["class_name", "image_path", "target"]
    assert len(df) == 15 and df["target"].dtype == np.int64
    assert sorted(df["target"].unique()) == [0, 1, 2]


def test_read_train_csv_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.csv: file not found"):
        read_train_csv(tmp_path / "nope.csv", tmp_path)


def test_read_train_csv_empty_file(tmp_path):
    assert "empty file" in bad_train(tmp_path, "")


def test_read_train_csv_header_only(tmp_path):
    assert "no rows" in bad_train(tmp_path, HEADER)


def test_read_train_csv_binary_is_not_utf8(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)))
    with pytest.raises(DataError, match=r"bad.csv: not UTF-8"):
        read_train_csv(csv, tmp_path)


def test_read_train_csv_ragged_rows_are_not_a_csv(tmp_path):
    assert "not a valid CSV" in bad_train(tmp_path, HEADER + "a,x.jpg,0,1,2,3\n")


def test_read_train_csv_missing_column_names_it_and_lists_found(tmp_path):
    msg = bad_train(tmp_path, "class_name,path,target\na,x.jpg,0\n")
    assert "missing column 'image_path'" in msg and "found: class_name, path, target" in msg


def test_read_train_csv_non_integer_target(tmp_path):
    msg = bad_train(tmp_path, HEADER + "a,x.jpg,0\nb,y.jpg,1.5\nc,z.jpg,dog\n")
    assert "integer" in msg and "2 (first: '1.5', 'dog')" in msg


def test_read_train_csv_target_out_of_range(tmp_path):
    # Two classes must be targets 0 and 1; a 2 means a gap (0..C-1 is not contiguous).
    msg = bad_train(tmp_path, HEADER + "a,x.jpg,0\nb,y.jpg,2\n")
    assert "[0, 2)" in msg and "'2'" in msg


def test_read_train_csv_negative_target(tmp_path):
    assert "out of range" in bad_train(tmp_path, HEADER + "a,x.jpg,-1\nb,y.jpg,1\n")


def test_read_train_csv_class_with_two_targets(tmp_path):
    msg = bad_train(tmp_path, HEADER + "a,x.jpg,0\na,y.jpg,1\nb,z.jpg,1\n")
    assert "class_name 'a' maps to several targets (0, 1)" in msg


def test_read_train_csv_target_with_two_classes(tmp_path):
    msg = bad_train(tmp_path, HEADER + "a,x.jpg,0\nb,y.jpg,0\nc,z.jpg,1\n")
    assert "maps to several" in msg


def test_read_train_csv_duplicate_image_path(tmp_path):
    msg = bad_train(tmp_path, HEADER + "a,x.jpg,0\na,x.jpg,0\nb,y.jpg,1\n")
    assert "duplicate image_path: 1 (first: 'x.jpg')" in msg


@pytest.mark.parametrize("other", ["./x.jpg", "sub/../x.jpg", ".//x.jpg", "x.jpg/"])
def test_read_train_csv_same_image_two_spellings_is_a_duplicate(tmp_path, other):
    # Two spellings of one file would land in two folds: a train/validation leak.
    msg = bad_train(tmp_path, HEADER + f"a,x.jpg,0\na,{other},0\nb,y.jpg,1\n")
    assert "duplicate image_path: 1 (first: 'x.jpg')" in msg
    assert f"lines 2, 3 as 'x.jpg', {other!r}" in msg


def test_read_csvs_return_normalised_paths(ds):
    csv, root = ds
    df = pd.read_csv(csv)
    want = df["image_path"].tolist()
    df["image_path"] = ["./" + p.replace("/", "//") if i % 2 else p.replace("/", "/./")
                        for i, p in enumerate(want)]
    df.to_csv(csv, index=False)
    assert read_train_csv(csv, root)["image_path"].tolist() == want
    test_csv = write_csv(root / "test.csv", "image_path\n./" + "\n./".join(want) + "\n")
    assert read_test_csv(test_csv, root)["image_path"].tolist() == want


@pytest.mark.parametrize(("rel", "says"), [
    ("train\\x.jpg", "image_path with '\\' (write paths with '/'): 1 (first: 'train\\\\x.jpg')"),
    (".", "image_path that names no file"),
    ("a/..", "image_path that names no file"),
])
def test_read_train_csv_refuses_backslash_and_root_itself(tmp_path, rel, says):
    assert says in bad_train(tmp_path, HEADER + f"a,{rel},0\nb,y.jpg,1\n")


def test_read_train_csv_follows_a_symlinked_dataset_folder(ds, tmp_path):
    csv, root = ds
    # The images live on "another disk"; the dataset folder links to them.
    other = tmp_path.parent / f"{tmp_path.name}_disk"
    (root / "train").rename(other)
    (root / "train").symlink_to(other, target_is_directory=True)
    df = read_train_csv(csv, root)
    assert len(df) == 15 and df["image_path"].iloc[0].startswith("train/")
    arr = load_images([root / p for p in df["image_path"]], 16, tmp_path / "cache", progress=False)
    assert arr.shape == (15, 16, 16, 3)


def test_read_train_csv_refuses_one_file_under_two_names_through_a_symlink(ds):
    csv, root = ds
    (root / "train" / "alias").symlink_to(root / "train" / "n00000000")
    text = csv.read_text() + "n00000000,train/alias/0.JPEG,0\n"
    csv.write_text(text)
    with pytest.raises(DataError, match=r"one file through a symlink: 1 .*lines 2, 17 as "
                                        r"'train/n00000000/0.JPEG', 'train/alias/0.JPEG'"):
        read_train_csv(csv, root)


def test_read_train_csv_folder_named_like_an_image(ds):
    csv, root = ds
    p = root / "train" / "n00000001" / "2.JPEG"
    p.unlink()
    p.mkdir()
    with pytest.raises(DataError, match=r"train.csv: image_path names a folder, not an image "
                                        r"file: 1 \(first: 'train/n00000001/2.JPEG'\)"):
        read_train_csv(csv, root)


def test_read_train_csv_refuses_a_single_class(tmp_path):
    msg = bad_train(tmp_path, HEADER + "cat ,x.jpg,0\ncat ,y.jpg,0\n")
    assert "only one class ('cat '); a classifier needs at least 2" in msg


def test_read_train_csv_messages_show_ints_plainly_and_names_quoted(tmp_path):
    # Not "target np.int64(0) maps to several class_names (a, a )": the trailing space shows.
    msg = bad_train(tmp_path, HEADER + "a,x.jpg,0\na ,y.jpg,0\nb,z.jpg,1\n")
    assert "target 0 maps to several class_names ('a', 'a ')" in msg


@pytest.mark.parametrize("rel", ["../outside.jpg", "/etc/passwd", "a/../../x.jpg"])
def test_read_train_csv_path_escaping_root(tmp_path, rel):
    root = tmp_path / "root"
    root.mkdir()
    csv = write_csv(root / "bad.csv", HEADER + f"a,{rel},0\nb,y.jpg,1\n")
    with pytest.raises(DataError, match="outside the image root"):
        read_train_csv(csv, root, check_images=False)


def test_resolve_image_path_follows_symlinks_and_refuses_dotdot(tmp_path):
    # Confinement is about the CSV's text ('..', absolute); a symlink inside the root (a
    # dataset folder on another disk) is followed.
    root, outside = tmp_path / "root", tmp_path / "other_disk"
    root.mkdir()
    outside.mkdir()
    (outside / "x.jpg").write_bytes(b"1")
    (root / "link").symlink_to(outside)
    assert resolve_image_path(root, "link/x.jpg") == (outside / "x.jpg").resolve()
    assert resolve_image_path(root, "./y.jpg") == (root / "y.jpg").resolve()
    with pytest.raises(DataError, match="outside the image root"):
        resolve_image_path(root, "link/../../other_disk/x.jpg")


def test_read_train_csv_missing_images_are_counted(ds):
    csv, root = ds
    for p in sorted((root / "train").rglob("*.JPEG"))[:4]:
        p.unlink()
    with pytest.raises(DataError, match=r"train.csv: images not found under .*: 4 \(first: "):
        read_train_csv(csv, root)
    assert len(read_train_csv(csv, root, check_images=False)) == 15


def test_read_train_csv_zero_byte_image(ds):
    csv, root = ds
    next((root / "train").rglob("*.JPEG")).write_bytes(b"")
    with pytest.raises(DataError, match=r"train.csv: empty \(0-byte\) images under .*: 1"):
        read_train_csv(csv, root)


def test_read_train_csv_min_per_class(ds):
    csv, root = ds
    with pytest.raises(DataError, match="class 'n00000000' has 5 row"):
        read_train_csv(csv, root, min_per_class=6)


def test_read_test_csv_missing_column(tmp_path):
    csv = write_csv(tmp_path / "test.csv", "path\nx.jpg\n")
    with pytest.raises(DataError, match=r"test.csv: missing column 'image_path' \(found: path\)"):
        read_test_csv(csv, tmp_path)


def test_read_test_csv_keeps_file_order(ds):
    _, root = ds
    rels = sorted(str(p.relative_to(root)) for p in (root / "train").rglob("*.JPEG"))[::-1]
    csv = write_csv(root / "test.csv", "image_path\n" + "\n".join(rels) + "\n")
    assert read_test_csv(csv, root)["image_path"].tolist() == rels


# ---------------------------------------------------------------- decoding


def test_read_image_colour_png_is_rgb(tmp_path):
    bgr = np.zeros((5, 7, 3), np.uint8)
    bgr[..., 2] = 255  # pure red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    img = read_image(tmp_path / "red.png")
    assert img.shape == (5, 7, 3) and img.dtype == np.uint8
    assert (img[..., 0] == 255).all() and (img[..., 1:] == 0).all()


def test_read_image_grey_jpeg_replicates_channels(tmp_path):
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (8, 1))
    cv2.imwrite(str(tmp_path / "g.JPEG"), grey)
    img = read_image(tmp_path / "g.JPEG")
    assert img.shape == (8, 25, 3)
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()


def test_read_image_alpha_composited_on_white_and_16bit_scaled(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)  # black, fully transparent
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    assert (read_image(tmp_path / "a.png") == 255).all()
    cv2.imwrite(str(tmp_path / "w.png"), np.full((4, 4), 65535, np.uint16))
    assert (read_image(tmp_path / "w.png") == 255).all()


def test_read_image_corrupt_file(tmp_path):
    (tmp_path / "bad.JPEG").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="bad.JPEG: cannot be decoded"):
        read_image(tmp_path / "bad.JPEG")


def test_read_image_refuses_huge_image(tmp_path, monkeypatch):
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((20, 30), np.uint8))
    monkeypatch.setattr(images, "MAX_PIXELS", 500)  # the header check, without a 50 MP file
    with pytest.raises(DataError, match=r"big.png: 30x20 image exceeds 500 pixels"):
        read_image(tmp_path / "big.png")


def _jpeg(path: Path, *, progressive: bool = False, size: int = 64, exif_thumb: bool = False,
          seed: int = 1) -> bytes:
    im = Image.fromarray(sketch(seed, size, colour=True))
    kw: dict = {"quality": 90, "progressive": progressive}
    if exif_thumb:  # an EXIF block holding a whole small JPEG: markers before the main scan
        thumb = Path(str(path) + ".thumb.jpg")
        im.resize((16, 16)).save(thumb)
        exif = Image.Exif()
        exif[0x0112] = 1
        kw["exif"] = exif.tobytes() + thumb.read_bytes()
    im.save(path, "JPEG", **kw)
    return path.read_bytes()


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("keep", [0.1, 0.6, 0.99])
def test_read_image_refuses_truncated_jpeg(tmp_path, progressive, keep):
    # libjpeg decodes these partly grey and only prints "Premature end of JPEG file". The
    # EXIF thumbnail's complete scan and end marker come first and must not fool the check.
    full = _jpeg(tmp_path / "full.JPEG", progressive=progressive, exif_thumb=True)
    scan = full.find(b"\xff\xda", full.find(b"\xff\xd9"))  # the main image's first scan
    cut = tmp_path / "cut.JPEG"
    cut.write_bytes(full[: scan + int((len(full) - scan) * keep)])
    with pytest.raises(DataError, match=r"cut.JPEG: truncated JPEG"):
        read_image(cut)
    assert read_image(tmp_path / "full.JPEG").shape == (64, 64, 3)


def test_read_image_accepts_jpeg_with_data_after_its_end(tmp_path):
    # A phone's motion photo appends a video after the JPEG's end-of-image marker.
    full = _jpeg(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(full + b"\xff\xda\x00\x08junk" + bytes(range(256)))
    np.testing.assert_array_equal(read_image(tmp_path / "b.jpg"), read_image(tmp_path / "a.jpg"))


def _radiance(path: Path, w: int, h: int, body: bytes = b"") -> Path:
    path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {h} +X {w}\n".encode()
                     + body)
    return path


def test_read_image_refuses_formats_whose_size_is_unchecked(tmp_path):
    # OpenCV would allocate 8000x8000 floats (768 MB) before finding the body missing; a
    # format PIL cannot size is refused before any decoding, whatever size it claims.
    for p in (_radiance(tmp_path / "big.hdr", 8000, 8000),
              _radiance(tmp_path / "small.hdr", 2, 1, bytes([128, 128, 128, 128] * 2))):
        with pytest.raises(DataError, match=rf"{p.name}: cannot be decoded as an image "
                                            r"\(.*one whose size cannot be read before decoding"):
            read_image(p)


def test_read_image_recognises_jpeg_and_png_by_content_not_suffix(tmp_path):
    # A transparent PNG named .JPEG: composited on white, not read as JPEG (black).
    cv2.imwrite(str(tmp_path / "t.png"), np.zeros((4, 4, 4), np.uint8))
    (tmp_path / "t.JPEG").write_bytes((tmp_path / "t.png").read_bytes())
    assert (read_image(tmp_path / "t.JPEG") == 255).all()


def test_read_image_refuses_a_folder_a_pipe_and_a_text_file(tmp_path):
    (tmp_path / "d.JPEG").mkdir()
    os.mkfifo(tmp_path / "p.JPEG")  # reading it would block forever
    for name in ("d.JPEG", "p.JPEG"):
        with pytest.raises(DataError, match=rf"{name}: not a regular file"):
            read_image(tmp_path / name)
    (tmp_path / "notes.JPEG").write_text("class,notes\n")
    with pytest.raises(DataError, match=r"notes.JPEG: cannot be decoded as an image"):
        read_image(tmp_path / "notes.JPEG")


def test_read_image_accepts_unusual_but_valid_images(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :10] = 255  # a white band on the left
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "exif.jpg", exif=exif.tobytes())
    rotated = read_image(tmp_path / "exif.jpg")
    assert rotated.shape == (40, 20, 3) and rotated[:10].mean() > 200 > rotated[-10:].mean()
    im.convert("CMYK").save(tmp_path / "cmyk.jpg")
    cmyk = read_image(tmp_path / "cmyk.jpg")
    assert cmyk.shape == (20, 40, 3) and cmyk[:, :10].mean() > 200 > cmyk[:, -10:].mean()
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert (read_image(tmp_path / "anim.gif") == 0).all()  # the first frame
    cv2.imwrite(str(tmp_path / "one.png"), np.full((1, 1), 7, np.uint8))
    assert read_image(tmp_path / "one.png").tolist() == [[[7, 7, 7]]]


def test_read_image_refuses_nan_pixels(tmp_path):
    Image.fromarray(np.full((4, 4), np.nan, np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match=r"nan.tif: floating-point image with NaN"):
        read_image(tmp_path / "nan.tif")


# ---------------------------------------------------------------- cache


def _paths(csv: Path, root: Path) -> list[Path]:
    return [root / p for p in read_train_csv(csv, root)["image_path"]]


def test_load_images_equals_direct_decode_and_resize(ds, tmp_path):
    paths = _paths(*ds)
    arr = load_images(paths, 24, tmp_path / "cache", progress=False)
    assert isinstance(arr, CachedImages) and arr.shape == (15, 24, 24, 3) and arr.dtype == np.uint8
    direct = np.stack([resize_square(read_image(p), 24) for p in paths])
    np.testing.assert_array_equal(arr, direct)


def test_load_images_cache_hit_reuses_file_and_change_invalidates(ds, tmp_path):
    paths = _paths(*ds)
    cache = tmp_path / "cache"
    a = load_images(paths, 24, cache, progress=False)
    files = sorted(cache.glob("*.npy"))
    stamp = files[0].stat().st_mtime_ns
    b = load_images(paths, 24, cache, progress=False)
    assert sorted(cache.glob("*.npy")) == files and files[0].stat().st_mtime_ns == stamp
    assert b.filename == a.filename
    # Change one image's pixels (and so its size/mtime): a new cache with the new pixels.
    cv2.imwrite(str(paths[0]), np.zeros((40, 40), np.uint8))
    os.utime(paths[0], ns=(stamp + 10**9, stamp + 10**9))
    c = load_images(paths, 24, cache, progress=False)
    assert c.filename != a.filename and (c[0] == 0).all() and not (a[0] == 0).all()
    assert not list(cache.glob(".*tmp")), "no temporary file is left behind"


def test_load_images_corrupt_image_lists_file_and_count(ds, tmp_path):
    paths = _paths(*ds)
    paths[3].write_bytes(b"garbage, not a JPEG")
    paths[7].write_bytes(b"\xff\xd8\xff" + b"\0" * 50)
    with pytest.raises(DataError, match=r"cannot be used: 2 \(first: .*JPEG"):
        load_images(paths, 24, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists(), "a failed first build leaves no file or folder"


def test_load_images_counts_truncated_and_unsizable_images(ds, tmp_path, capfd):
    paths = _paths(*ds)
    for p in paths[:3]:
        p.write_bytes(p.read_bytes()[:-200])  # truncated: would decode partly grey
    _radiance(paths[9], 8000, 8000)
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((8, 8), np.uint8))
    paths[10].write_bytes((tmp_path / "x.png").read_bytes()[:-30])  # a truncated PNG
    with pytest.raises(DataError) as err:
        load_images(paths, 24, tmp_path / "cache", progress=False)
    msg = str(err.value)
    assert "cannot be used: 5 (first: " in msg and "truncated JPEG" in msg and "\n" not in msg
    assert "Premature end" not in capfd.readouterr().err, "no libjpeg warning on the terminal"


def test_load_images_concurrent_builders_agree(ds, tmp_path):
    paths, cache = _paths(*ds), tmp_path / "cache"
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: load_images(paths, 24, cache, progress=False), range(2))
    np.testing.assert_array_equal(a, b)
    assert len(list(cache.iterdir())) == 1, "one cache file, no temporary left"


def test_cached_images_pickle_by_path_not_data(ds, tmp_path):
    arr = load_images(_paths(*ds), 64, tmp_path / "cache", progress=False)
    blob = pickle.dumps(arr)
    assert len(blob) < 1000 < arr.nbytes
    back = pickle.loads(blob)
    assert isinstance(back, CachedImages)
    np.testing.assert_array_equal(back, arr)
    view = pickle.loads(pickle.dumps(arr[2:4]))  # a view pickles as its own data
    np.testing.assert_array_equal(view, arr[2:4])


# ---------------------------------------------------------------- dataset


def test_sketch_dataset_items_and_unlabelled_target(ds, tmp_path):
    arr = load_images(_paths(*ds), 16, tmp_path / "cache", progress=False)
    targets = np.arange(15) % 3
    x, y = SketchDataset(arr, targets)[4]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 1
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    _, y = SketchDataset(arr, None)[0]
    assert y == -1
    batch = next(iter(torch.utils.data.DataLoader(SketchDataset(arr, targets), batch_size=5)))
    assert batch[0].shape == (5, 3, 16, 16) and batch[1].tolist() == [0, 1, 2, 0, 1]


# ---------------------------------------------------------------- CSVs a new user might bring


@pytest.mark.parametrize(("encoding", "bom"), [("utf-16", True), ("utf-16-le", False)])
def test_read_train_csv_utf16_is_named(tmp_path, encoding, bom):
    # Without a BOM pandas read the NULs into column names that print invisibly.
    csv = tmp_path / "bad.csv"
    csv.write_bytes((HEADER + "a,x.jpg,0\nb,y.jpg,1\n").encode(encoding))
    with pytest.raises(DataError, match=r"bad.csv: not UTF-8 text \(NUL bytes: UTF-16"):
        read_train_csv(csv, tmp_path, check_images=False)


@pytest.mark.parametrize("sep", [";", "\t"])
def test_read_train_csv_other_delimiter_is_named(tmp_path, sep):
    msg = bad_train(tmp_path, (HEADER + "a,x.jpg,0\nb,y.jpg,1\n").replace(",", sep))
    assert f"it looks {sep!r}-separated: save it with ','" in msg


def test_read_train_csv_header_with_a_line_break_stays_one_line(tmp_path):
    msg = bad_train(tmp_path, '"class\nname",image_path,target\na,x.jpg,0\n')
    assert "found: 'class\\nname', image_path, target" in msg


def test_read_train_csv_huge_target_is_out_of_range(tmp_path):
    msg = bad_train(tmp_path, HEADER + "a,x.jpg,0\nb,y.jpg,99999999999999999999999\n")
    assert "out of range: 1 (first: '99999999999999999999999')" in msg


def test_read_train_csv_folder_given_as_the_csv(tmp_path):
    (tmp_path / "train.csv").mkdir()
    with pytest.raises(DataError, match=r"train.csv: is a folder, not a CSV file"):
        read_train_csv(tmp_path / "train.csv", tmp_path)
