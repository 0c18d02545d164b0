"""Reading the image list of `predict --images`: relative under a root, absolute as they are."""

from __future__ import annotations

import pandas as pd
import pytest

from sketchtune.data import DataError
from sketchtune.predict import read_image_list


def _csv(tmp_path, paths):
    csv = tmp_path / "lists" / "new.csv"
    csv.parent.mkdir(exist_ok=True)
    pd.DataFrame({"image_path": paths}).to_csv(csv, index=False)
    return csv


def test_read_image_list_relative_under_root_absolute_as_is(tmp_path):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"png")
    elsewhere = tmp_path / "mine" / "y.png"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"png")
    csv = _csv(tmp_path, ["a/x.png", str(elsewhere)])
    assert read_image_list(csv, root) == [root / "a" / "x.png", elsewhere]


def test_read_image_list_missing_image_names_the_root_and_the_option(tmp_path):
    csv = _csv(tmp_path, ["gone.png", "also/gone.png"])
    with pytest.raises(DataError) as e:
        read_image_list(csv, csv.parent)
    msg = str(e.value)
    assert msg.startswith(f"{csv}: 2 image(s) not found (first: 'gone.png', 'also/gone.png')")
    assert f"relative paths are read under {csv.parent} (--image-root)" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(("text", "want"), [
    (b"", "empty file"), (b"path\nx.png\n", "missing column 'image_path'"),
    (b"image_path\n", "no rows"), (b"image_path,n\n ,1\n", "empty 'image_path' in 1 row"),
])
def test_read_image_list_bad_csv_is_one_data_error(tmp_path, text, want):
    csv = tmp_path / "new.csv"
    csv.write_bytes(text)
    with pytest.raises(DataError, match=want):
        read_image_list(csv, tmp_path)
