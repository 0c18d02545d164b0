"""Generated bad CSVs: read_train_csv/read_test_csv return a valid frame or one DataError line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sketchtune.errors import DataError
from sketchtune.tables import normalise_image_path, read_test_csv, read_train_csv
from tests.data_fixtures import make_dataset

# Fast enough for every run: each example reads one small CSV (and stats its 15 images).
SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("props")
    make_dataset(root)  # 3 classes x 5 JPEGs under train/, train.csv beside them
    return root


def _rows(root: Path) -> list[list[str]]:
    df = pd.read_csv(root / "train.csv", dtype=str)
    return [df.columns.tolist()] + df.values.tolist()


# Cells as people and spreadsheets mistype them; text() adds the ones nobody would.
CELL = st.one_of(
    st.sampled_from(["", " ", "0", "1", "2", "-1", "1.0", "1e3", "nan", "NA", "None", "001",
                     "99999999999999999999", "a,b", 'say "hi"', "line\nbreak", "\t", "\r"]),
    st.text(max_size=12),
)
PATH_EDIT = st.sampled_from([
    lambda p: "./" + p, lambda p: p.replace("/", "//"), lambda p: "x/../" + p,
    lambda p: "../" + p, lambda p: "/" + p, lambda p: p.replace("/", "\\"), lambda p: p + "/",
    lambda p: " " + p, lambda p: p.upper(), lambda p: p.rsplit("/", 1)[0], lambda p: ".",
    lambda p: p + "\0", lambda p: "a/" * 3 + "../" * 4 + p,
])


@st.composite
def mutated_csv(draw: st.DrawFn, rows: list[list[str]]) -> bytes:
    """A valid CSV (as rows) after a few random edits, encoded, maybe cut or spliced."""
    rows = [list(r) for r in rows]
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["cell", "path", "path", "path", "drop", "dup", "header",
                                     "extra"]))
        i = draw(st.integers(0, len(rows) - 1))
        j = draw(st.integers(0, len(rows[i]) - 1))
        if kind == "cell":
            rows[i][j] = draw(CELL)
        elif kind == "path" and i > 0 and "image_path" in rows[0]:
            k = rows[0].index("image_path")
            if k < len(rows[i]):
                rows[i][k] = draw(PATH_EDIT)(rows[i][k])
        elif kind == "drop" and len(rows) > 1:
            del rows[draw(st.integers(1, len(rows) - 1))]
        elif kind == "dup":
            rows.append(list(rows[draw(st.integers(1, len(rows) - 1))]) if len(rows) > 1
                        else list(rows[0]))
        elif kind == "header":
            del rows[0]
        elif kind == "extra":
            rows[i].append(draw(CELL))
        if not rows:
            break
    # Mostly the file's own format, so that most examples reach the checks past parsing.
    sep = draw(st.sampled_from([","] * 8 + [";", "\t", "|"]))
    quote = draw(st.booleans())

    def cell(c: str) -> str:
        if quote or any(ch in c for ch in (sep, '"', "\n", "\r")):
            return '"' + c.replace('"', '""') + '"'
        return c

    text = "".join(sep.join(cell(c) for c in r) + draw(st.sampled_from(["\n", "\r\n"]))
                   for r in rows)
    enc = draw(st.sampled_from(["utf-8"] * 8 + ["utf-8-sig", "utf-16", "utf-16-le", "latin-1",
                                                "cp1252"]))
    data = text.encode(enc, errors="replace")
    edit = draw(st.sampled_from(["none"] * 6 + ["cut", "splice"]))
    if edit == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif edit == "splice":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=8)) + data[at:]
    return data


def _check_error(err: DataError, csv: Path) -> None:
    msg = str(err)
    event(msg.removeprefix(f"{csv}: ")[:20])  # --hypothesis-show-statistics: which refusals
    assert str(csv) in msg, msg
    assert "\n" not in msg and "\r" not in msg, msg


def _check_paths(df: pd.DataFrame, root: Path, check_images: bool) -> None:
    paths = df["image_path"].tolist()
    assert df["image_path"].is_unique
    assert all(normalise_image_path(p) == p for p in paths)  # the one spelling of each
    if check_images:
        assert all((root / p).is_file() for p in paths)


@SETTINGS
@given(data=st.data(), check_images=st.booleans())
def test_read_train_csv_mutations_give_a_valid_frame_or_one_line(root, data, check_images):
    csv = root / "mutated_train.csv"
    csv.write_bytes(data.draw(mutated_csv(_rows(root))))
    try:
        df = read_train_csv(csv, root, check_images=check_images)
    except DataError as err:
        _check_error(err, csv)
        return
    event("a valid frame")
    assert list(df.columns) == ["class_name", "image_path", "target"]
    assert df["target"].dtype == np.int64 and len(df) > 0
    n = df["class_name"].nunique()
    assert n >= 2 and sorted(df["target"].unique()) == list(range(n))
    assert (df.groupby("class_name")["target"].nunique() == 1).all()
    _check_paths(df, root, check_images)


@SETTINGS
@given(data=st.data(), check_images=st.booleans())
def test_read_test_csv_mutations_give_a_valid_frame_or_one_line(root, data, check_images):
    csv = root / "mutated_test.csv"
    rows = [[r[1]] for r in _rows(root)]  # image_path only
    csv.write_bytes(data.draw(mutated_csv(rows)))
    try:
        df = read_test_csv(csv, root, check_images=check_images)
    except DataError as err:
        _check_error(err, csv)
        return
    event("a valid frame")
    assert list(df.columns) == ["image_path"] and len(df) > 0
    _check_paths(df, root, check_images)
