"""The decoded-image cache: one memory-mapped file per image list and size, shared by every
trial and epoch; and `python -m sketchtune.cache list|remove [CONFIG]`, which manages them."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from .cli import OneLineParser, add_debug_argument, run_cli, size_text
from .config import SweepConfig, load_config
from .errors import ConfigError, DataError
from .images import open_cache, opencv_quiet, read_image, resize_square
from .tables import first_of, read_test_csv, read_train_csv

__all__ = ["CacheFile", "cache_key", "find_caches", "load_images", "main", "mapped_by",
           "match_config", "parse_age", "read_cache_info"]

_log = logging.getLogger(__name__)

# Bump when decoding or resizing changes, so old caches are not reused.
# 2: truncated JPEGs are refused (a version-1 cache may hold their grey rows) and JPEG is
#    recognised by content, not by the file's suffix.
_CACHE_VERSION = 2


def cache_key(paths: list[Path], img_size: int) -> str:
    """The cache's name: a hash of the version, the size, and each image's path, size, mtime."""
    h = hashlib.sha1(json.dumps({"v": _CACHE_VERSION, "size": img_size}).encode())
    missing = []
    for p in paths:
        try:
            st = p.stat()
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            missing.append(p)
    if missing:
        raise DataError(f"images not found: {first_of(missing)}")
    return h.hexdigest()[:16]


CACHE_INFO_XATTR = "user.sketchtune.cache"  # what a cache holds, read by `sketchtune.cache list`


def read_cache_info(cache: Path) -> dict[str, Any] | None:
    """What a cache was made from (img_size, n_images, image_folder, built); None if unknown."""
    try:
        info = json.loads(os.getxattr(cache, CACHE_INFO_XATTR))
    except (OSError, ValueError, AttributeError):  # no xattr support, none set, not JSON
        return None
    return info if isinstance(info, dict) else None


def _write_cache_info(path: Path, paths: list[Path], img_size: int) -> None:
    # A file attribute, not a second file: the cache stays one file that appears whole
    # (it is set on the temporary file before the rename). Informative only: a file system
    # without user xattrs loses nothing but `sketchtune.cache list`'s folder column.
    info = {"img_size": img_size, "n_images": len(paths), "built": time.strftime("%FT%T%z"),
            "image_folder": os.path.commonpath([str(p.parent) for p in paths])}
    with contextlib.suppress(OSError, AttributeError):
        os.setxattr(path, CACHE_INFO_XATTR, json.dumps(info).encode())


def _mark_used(final: Path) -> None:
    # The access time says when a cache was last used (`sketchtune.cache remove --older-than`);
    # relatime mounts update it at most daily, so set it on each hit. mtime stays the build's.
    with contextlib.suppress(OSError):  # a read-only cache folder is fine
        os.utime(final, ns=(time.time_ns(), final.stat().st_mtime_ns))  # mtime exact


def load_images(
    paths: list[Path], img_size: int, cache_dir: Path, *, progress: bool = True,
    workers: int | None = None,
) -> np.ndarray:
    """Decoded, square-resized images -> (N, img_size, img_size, 3) uint8 RGB, memory-mapped.

    The cache file under `cache_dir` is keyed by the resolved paths, their sizes and
    mtimes, and img_size: every epoch and every trial on the machine reuses it, and a
    changed image makes a new one. It is written to a per-process temporary name and
    renamed, so concurrent builders never see each other's half-written file. A file that
    cannot be decoded raises DataError listing the first few and the count.
    """
    if not paths:
        return np.zeros((0, img_size, img_size, 3), np.uint8)
    paths = [Path(p).resolve() for p in paths]
    cache_dir = Path(cache_dir)
    final = cache_dir / f"images_{len(paths)}x{img_size}_{cache_key(paths, img_size)}.npy"
    if final.is_file():
        try:
            arr = open_cache(final)
            if arr.shape == (len(paths), img_size, img_size, 3) and arr.dtype == np.uint8:
                _log.debug("image cache hit: %s", final)
                _mark_used(final)
                return arr
        except (OSError, ValueError):
            pass
        _log.warning("image cache %s is unreadable; rebuilding it", final)
    made_dir = not cache_dir.is_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    bad: list[str] = []
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(paths), img_size, img_size, 3))

        def work(i: int) -> None:
            try:
                out[i] = resize_square(read_image(paths[i]), img_size)
            except DataError as err:
                bad.append(f"{paths[i]} ({str(err).removeprefix(f'{paths[i]}: ')})")
            except cv2.error:
                bad.append(f"{paths[i]} (cannot be decoded as an image)")

        # cv2 releases the GIL while decoding and resizing, so threads scale across cores:
        # one per core this process may use (a 16-core GPU box decodes on 16, not 8).
        n = workers or len(os.sched_getaffinity(0)) or 1
        with opencv_quiet(), ThreadPoolExecutor(n) as pool:
            it = pool.map(work, range(len(paths)))
            for _ in tqdm(it, total=len(paths), desc=f"decoding {img_size}px", unit="img",
                          disable=not progress, leave=False):
                pass
        if bad:
            raise DataError(f"images that cannot be used: {first_of(sorted(bad))}; replace or "
                            "drop them")
        out.flush()
        _write_cache_info(tmp, paths, img_size)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
        if made_dir and not final.is_file():
            with contextlib.suppress(OSError):  # a failed first build leaves no empty folder
                cache_dir.rmdir()  # (only if empty: a concurrent builder may be using it)
    _log.info("image cache built: %s (%.1f MB)", final, final.stat().st_size / 1e6)
    return open_cache(final)


# ---------------------------------------------------------------- the cache files, found


# The names load_images gives its files: images_<N>x<S>_<key>.npy, and while it builds one,
# .images_<N>x<S>_<key>.npy.<pid>.<random>.tmp (renamed to the final name when complete).
_FINAL = re.compile(r"images_(\d+)x(\d+)_([0-9a-f]{16})\.npy")
_TMP = re.compile(r"\.(images_\d+x\d+_[0-9a-f]{16}\.npy)\.(\d+)\.[0-9a-f]+\.tmp")
_AGE = re.compile(r"(\d+(?:\.\d+)?)([dhm])")
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0}


@dataclass
class CacheFile:
    """One cache file (or a builder's partial file) and what is known about it."""

    path: Path
    n_images: int
    img_size: int
    bytes: int
    last_used: float  # seconds since the epoch: the newest of mtime and atime
    partial_pid: int | None = None  # a build in progress (or killed): its builder's pid
    dataset: str = ""  # what it was made from, when known (see match_config)
    users: list[int] = field(default_factory=list)  # pids that map the file now (this machine)

    @property
    def partial(self) -> bool:
        return self.partial_pid is not None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True  # PermissionError included: another user's process is alive


def find_caches(cache_dir: Path) -> list[CacheFile]:
    """The cache files in `cache_dir` (none when it does not exist), by image size then name."""
    out: list[CacheFile] = []
    for p in sorted(Path(cache_dir).iterdir()) if Path(cache_dir).is_dir() else []:
        m, t = _FINAL.fullmatch(p.name), _TMP.fullmatch(p.name)
        with contextlib.suppress(OSError):  # removed while we looked
            if (m or t) and p.is_file():
                st, info = p.stat(), {} if t else read_cache_info(p) or {}
                m = m or _FINAL.fullmatch(t.group(1))
                out.append(CacheFile(
                    p.resolve(), int(m.group(1)), int(m.group(2)), st.st_size,
                    max(st.st_mtime, st.st_atime), partial_pid=int(t.group(2)) if t else None,
                    dataset=f"images in {info['image_folder']}" if info.get("image_folder")
                    else ""))
    out.sort(key=lambda c: (c.img_size, c.path.name))
    return out


def mapped_by(paths: list[Path]) -> dict[Path, list[int]]:
    """The pids on this machine that have each file memory-mapped (read from /proc/*/maps).

    A trial maps its caches for its whole life, so this finds the running sweeps and trials
    of this machine. Processes of other users (unreadable maps) and of other nodes are not seen.
    """
    found: dict[Path, list[int]] = {p: [] for p in paths}
    for d in Path("/proc").glob("[0-9]*") if paths else []:
        with contextlib.suppress(OSError):  # gone, or another user's
            text = (d / "maps").read_text() if int(d.name) != os.getpid() else ""
            for p in paths:
                if str(p) in text:
                    found[p].append(int(d.name))
    return found


def match_config(cfg: SweepConfig, caches: list[CacheFile]) -> list[str]:
    """Name each cache that holds the config's current train or test images; notes back.

    A cache's key covers each image's path, size and mtime, so a cache that matches no list
    was made from other data, or from these images before one changed: no sweep of this
    config reads it again.
    """
    d, lists, notes = cfg.data, [], []
    try:
        for kind, csv, root, read in (("train", d.train_csv, d.image_root, read_train_csv),
                                      ("test", d.test_csv, d.test_image_root, read_test_csv)):
            rows = read(csv, root, check_images=False)
            lists.append((f"{kind} ({csv})", [(Path(root) / p).resolve()
                                              for p in rows["image_path"]]))
    except DataError as err:
        notes.append(f"cannot match caches to the data: {err}")
    for label, paths in lists:
        keys: dict[int, str] = {}
        for c in (c for c in caches if c.n_images == len(paths)):
            if c.img_size not in keys:
                try:
                    keys[c.img_size] = cache_key(paths, c.img_size)
                except DataError:  # an image is gone: no cache of this list can be current
                    keys[c.img_size] = ""
            name = f"images_{c.n_images}x{c.img_size}_{keys[c.img_size]}"
            if keys[c.img_size] and c.path.name.lstrip(".").startswith(name):
                c.dataset = label
    for c in caches:
        if not c.dataset.startswith(("train (", "test (")) and not c.partial:
            c.dataset = "not this config's images (other data, or they changed since)" + (
                f": {c.dataset}" if c.dataset else "")
    return notes


def parse_age(text: str) -> float:
    """'7d', '12h', '30m' or '1.5d' -> seconds; ValueError otherwise."""
    m = _AGE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"--older-than {text!r}: give a number and a unit: 7d, 12h or 30m")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def _ago(t: float) -> str:
    s = max(0.0, time.time() - t)
    return (f"{s / 60:.0f} min ago" if s < 3600 else f"{s / 3600:.0f} h ago" if s < 172800
            else f"{s / 86400:.0f} d ago")


# ---------------------------------------------------------------- CLI
_HELP = """\
Image caches: every image decoded once per img_size into a memory-mapped .npy file that
every trial reads, N x S x S x 3 bytes (the competition's 25,035 images: 3.77 GB at 224 px),
in data.cache_dir (default <train_csv folder>/.cache); nothing removes them but this command.
A cache that a process on this machine maps is never removed; processes on other nodes of a
Ray cluster are not seen: stop sweeps there first. A removed cache costs only its rebuild.
"""


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m sketchtune.cache", description=_HELP,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{list,remove}")
    for name, what in (("list", "show the caches: path, img_size, images, disk, last used, "
                                "data set, processes using it"),
                       ("remove", "remove caches chosen by --img-size, --older-than or --all")):
        s = sub.add_parser(name, help=what, description=what + ".\n\n" + _HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        s.add_argument("config", nargs="?", default=None,
                       help="a sweep config: its data.cache_dir, and which caches hold its "
                            "train/test images (default: configs/sweep.yaml unless --dir)")
        s.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                       help="dotted override of the config (e.g. data.cache_dir=/scratch/c)")
        s.add_argument("--dir", metavar="DIR", action="append", default=[], type=Path,
                       help="a cache folder to look in as well (repeatable)")
        add_debug_argument(s)
    rm = sub.choices["remove"]
    rm.add_argument("--img-size", type=int, action="append", default=[], metavar="PX",
                    help="remove the caches of this image size (repeatable)")
    rm.add_argument("--older-than", metavar="AGE",
                    help="remove caches not used for AGE: 7d, 12h, 30m")
    rm.add_argument("--stale", action="store_true",
                    help="remove caches that hold none of CONFIG's current images")
    rm.add_argument("--all", action="store_true", help="remove every cache in the folders")
    rm.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_cli("sketchtune.cache", _main, args)


def _main(args: argparse.Namespace) -> int:
    cfg = None
    if args.config is not None or not args.dir:
        cfg = load_config(args.config or "configs/sweep.yaml", args.set or None)
    elif args.set:
        raise ConfigError("--set needs a CONFIG to apply to")
    dirs = list(dict.fromkeys([*([Path(cfg.data.cache_dir).resolve()] if cfg else []),
                               *(d.resolve() for d in args.dir)]))
    for d in dirs:
        if d.exists() and not d.is_dir():
            raise ConfigError(f"{d}: is a file, not a cache folder")
    caches = [c for d in dirs for c in find_caches(d)]
    notes = match_config(cfg, caches) if cfg else []
    for c, users in mapped_by([c.path for c in caches]).items():
        next(x for x in caches if x.path == c).users = users
    if args.command == "list":
        return _list(dirs, caches, notes)
    return _remove(args, cfg, caches, notes)


def _list(dirs: list[Path], caches: list[CacheFile], notes: list[str]) -> int:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"cache folder(s): {', '.join(map(str, dirs))}")
    if not caches:
        print("no image caches")
        return 0
    rows = [("img_size", "images", "disk", "last used", "data set", "in use", "file")]
    for c in caches:
        use = f"pid {', '.join(map(str, c.users))}" if c.users else "no"
        if c.partial:
            use = f"building (pid {c.partial_pid})" if _pid_alive(c.partial_pid or 0) else \
                "partial: its builder died"
        rows.append((str(c.img_size), f"{c.n_images:,}", size_text(c.bytes), _ago(c.last_used),
                     c.dataset or "unknown (give CONFIG)", use, str(c.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    print(f"total: {len(caches)} file(s), {size_text(sum(c.bytes for c in caches))}")
    return 0


def _remove(args: argparse.Namespace, cfg: SweepConfig | None, caches: list[CacheFile],
            notes: list[str]) -> int:
    if not (args.img_size or args.older_than or args.all or args.stale):
        raise ConfigError("remove: say which caches: --img-size PX, --older-than AGE, --stale "
                          "or --all (list shows them)")
    if args.all and (args.img_size or args.older_than or args.stale):
        raise ConfigError("remove: --all removes every cache; give it alone, or choose with "
                          "--img-size, --older-than and --stale (they combine)")
    if args.stale and (cfg is None or notes):
        raise ConfigError("remove --stale: needs a CONFIG whose train/test CSVs can be read "
                          + (f"({notes[0]})" if notes else ""))
    try:
        cutoff = time.time() - parse_age(args.older_than) if args.older_than else None
    except ValueError as err:
        raise ConfigError(str(err)) from None
    chosen = [c for c in caches
              if (not args.img_size or c.img_size in args.img_size)
              and (cutoff is None or c.last_used < cutoff)
              and (not args.stale or not c.dataset.startswith(("train (", "test (")))]
    freed, kept = 0, []
    for c in chosen:
        busy = c.users or (c.partial and _pid_alive(c.partial_pid or 0))
        if busy:
            who = c.users or [c.partial_pid]
            kept.append(f"{c.path} (in use by pid {', '.join(map(str, who))})")
            continue
        print(f"{'would remove' if args.dry_run else 'removed'} {c.path} ({size_text(c.bytes)})")
        if not args.dry_run:
            try:
                c.path.unlink()
            except FileNotFoundError:
                continue
            except OSError as err:
                raise ConfigError(f"{c.path}: cannot be removed ({err.strerror or err})") from None
        freed += c.bytes
    verb = "would free" if args.dry_run else "freed"
    print(f"{verb} {size_text(freed)}; {len(chosen) - len(kept)} of {len(caches)} cache file(s)")
    for k in kept:
        print(f"kept {k}: stop that process first", file=sys.stderr)
    return 0 if not kept else 1


if __name__ == "__main__":
    raise SystemExit(main())
