"""sketchtune.cache: list and remove decoded-image caches, never one a live process maps."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sketchtune.cache import find_caches, main, mapped_by, parse_age, read_cache_info
from sketchtune.config import load_config
from sketchtune.demo import make_demo
from sketchtune.prepare import prepare_data
from tests.conftest import tiny_config_dict, write_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("cache") / "data"
    make_demo(data, classes=3, per_class=5, test_per_class=2, size=24, seed=0)
    return data


@pytest.fixture
def cached(data_dir, tmp_path):
    """Caches of the tiny data set at 16 and 24 px in a folder of this test's; -> (config, dir)."""
    cfg = tiny_config_dict(data_dir, tmp_path, **{"data.cache_dir": str(tmp_path / "cache")})
    path = write_config(tmp_path / "c.yaml", cfg)
    cfg = load_config(path)
    for size in (16, 24):
        prepare_data(cfg, size)
    return path, Path(cfg.data.cache_dir)


def _sizes(cache_dir: Path) -> list[tuple[int, int]]:
    return [(c.img_size, c.n_images) for c in find_caches(cache_dir)]


def test_cache_list_names_size_images_and_which_list_of_the_config(cached, capsys):
    path, cache_dir = cached
    assert sorted(_sizes(cache_dir)) == [(16, 6), (16, 15), (24, 6), (24, 15)]
    assert main(["list", str(path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "images_" in line]
    assert len(rows) == 4
    assert sum("train (" in r for r in rows) == 2 and sum("test (" in r for r in rows) == 2
    # 15 train images at 24 px: 15 * 24 * 24 * 3 bytes of pixels plus the .npy header.
    big = next(c for c in find_caches(cache_dir) if (c.img_size, c.n_images) == (24, 15))
    assert big.bytes == 15 * 24 * 24 * 3 + 128
    assert "total: 4 file(s)" in out


def test_cache_list_without_config_reads_the_image_folder_from_the_info_file(
        cached, data_dir, capsys):
    _, cache_dir = cached
    assert main(["list", "--dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert out.count(f"images in {data_dir.resolve() / 'train'}") == 2
    for c in find_caches(cache_dir):
        info = read_cache_info(c.path)
        assert info is not None and (info["img_size"], info["n_images"]) == (c.img_size,
                                                                           c.n_images)


def test_cache_remove_by_size_removes_only_that_size_and_its_info(cached, capsys):
    path, cache_dir = cached
    assert main(["remove", str(path), "--img-size", "16"]) == 0
    assert sorted(_sizes(cache_dir)) == [(24, 6), (24, 15)]
    assert "freed" in capsys.readouterr().out


def test_cache_remove_without_a_choice_is_one_line_and_removes_nothing(cached, capsys):
    path, cache_dir = cached
    assert main(["remove", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--img-size" in err
    assert main(["remove", str(path), "--all", "--img-size", "16"]) == 2
    assert main(["remove", str(path), "--older-than", "soon"]) == 2
    assert len(find_caches(cache_dir)) == 4


def test_cache_remove_dry_run_removes_nothing(cached, capsys):
    path, cache_dir = cached
    assert main(["remove", str(path), "--all", "--dry-run"]) == 0
    assert "would remove" in capsys.readouterr().out
    assert len(find_caches(cache_dir)) == 4


def test_cache_remove_older_than_keeps_caches_used_since(cached):
    path, cache_dir = cached
    old = time.time() - 10 * 86400
    for c in find_caches(cache_dir):
        if c.img_size == 16:
            os.utime(c.path, (old, old))
    assert main(["remove", str(path), "--older-than", "7d"]) == 0
    assert sorted(_sizes(cache_dir)) == [(24, 6), (24, 15)]


def test_cache_hit_marks_the_cache_used(cached):
    path, cache_dir = cached
    c = next(c for c in find_caches(cache_dir) if c.img_size == 24)
    old = time.time() - 10 * 86400
    os.utime(c.path, (old, old))
    prepare_data(load_config(path), 24)  # a cache hit
    st = c.path.stat()
    assert st.st_atime > time.time() - 600 and st.st_mtime == pytest.approx(old)


def test_cache_remove_stale_keeps_the_current_data_and_removes_a_changed_image(cached, capsys):
    path, cache_dir = cached
    cfg = load_config(path)
    img = next(Path(cfg.data.train_csv).parent.glob("train/*/*"))
    st = img.stat()
    os.utime(img, (time.time() + 5, time.time() + 5))  # a changed image: a new cache key
    try:
        assert main(["remove", str(path), "--stale"]) == 0
    finally:
        os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))  # the module's data, as it was
    # The two train caches no longer match train.csv's images; the test caches still do.
    assert sorted(_sizes(cache_dir)) == [(16, 6), (24, 6)]
    capsys.readouterr()


def test_cache_remove_refuses_a_cache_a_live_process_maps(cached, capsys):
    path, cache_dir = cached
    victim = next(c for c in find_caches(cache_dir) if (c.img_size, c.n_images) == (24, 15))
    code = (f"import numpy as np, sys, time; a = np.load({str(victim.path)!r}, mmap_mode='r'); "
            "a[0].sum(); print('mapped', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "mapped"
        assert mapped_by([victim.path])[victim.path] == [proc.pid]
        assert main(["remove", str(path), "--all"]) == 1
        captured = capsys.readouterr()
        assert f"in use by pid {proc.pid}" in captured.err
        assert [c.path for c in find_caches(cache_dir)] == [victim.path]
        assert f"pid {proc.pid}" in (main(["list", str(path)]), capsys.readouterr().out)[1]
    finally:
        proc.kill()
        proc.wait()


def test_cache_parse_age():
    assert parse_age("7d") == 7 * 86400 and parse_age("1.5h") == 5400 and parse_age("30m") == 1800
    with pytest.raises(ValueError, match="7d"):
        parse_age("7 days")


def test_cache_list_of_a_missing_folder_says_no_caches(tmp_path, capsys):
    assert main(["list", "--dir", str(tmp_path / "none")]) == 0
    assert "no image caches" in capsys.readouterr().out
