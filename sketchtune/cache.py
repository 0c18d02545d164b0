"""Decoded-image caches on disk: `python -m sketchtune.cache list|remove [CONFIG]`."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cli import OneLineParser, add_debug_argument, run_cli
from .config import ConfigError, SweepConfig, load_config
from .data import DataError, _cache_key, read_cache_info, read_test_csv, read_train_csv

__all__ = ["CacheFile", "find_caches", "main", "mapped_by", "match_config", "parse_age"]

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
    except PermissionError:  # another user's process: alive
        return True
    return True


def find_caches(cache_dir: Path) -> list[CacheFile]:
    """The cache files in `cache_dir` (none when it does not exist), by image size then name."""
    out: list[CacheFile] = []
    if not Path(cache_dir).is_dir():
        return out
    for p in sorted(Path(cache_dir).iterdir()):
        m, t = _FINAL.fullmatch(p.name), _TMP.fullmatch(p.name)
        if not (m or t) or not p.is_file():
            continue
        try:
            st = p.stat()
        except OSError:  # removed while we looked
            continue
        if t:
            m, pid = _FINAL.fullmatch(t.group(1)), int(t.group(2))
        else:
            pid = None
        assert m is not None
        out.append(CacheFile(p.resolve(), int(m.group(1)), int(m.group(2)), st.st_size,
                             max(st.st_mtime, st.st_atime), partial_pid=pid,
                             dataset="" if t else _built_from(p)))
    out.sort(key=lambda c: (c.img_size, c.path.name))
    return out


def _built_from(cache: Path) -> str:
    """'images in FOLDER' from the cache's info attribute; '' when it has none."""
    info = read_cache_info(cache)
    return f"images in {info['image_folder']}" if info and info.get("image_folder") else ""


def mapped_by(paths: list[Path]) -> dict[Path, list[int]]:
    """The pids on this machine that have each file memory-mapped (read from /proc/*/maps).

    A trial maps its caches for its whole life, so this finds the running sweeps and trials
    of this machine. Processes of other users (unreadable maps) and of other nodes are not seen.
    """
    want = {str(p): p for p in paths}
    found: dict[Path, list[int]] = {p: [] for p in paths}
    proc = Path("/proc")
    if not want or not proc.is_dir():
        return found
    for d in proc.iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            text = (d / "maps").read_text()
        except OSError:  # gone, or another user's
            continue
        for name, p in want.items():
            if name in text:
                found[p].append(int(d.name))
    return found


def match_config(cfg: SweepConfig, caches: list[CacheFile]) -> list[str]:
    """Name each cache that holds the config's current train or test images; notes back.

    A cache's key covers each image's path, size and mtime, so a cache that matches no list
    was made from other data, or from these images before one changed: no sweep of this
    config reads it again.
    """
    d = cfg.data
    lists: list[tuple[str, list[Path]]] = []
    notes = []
    try:
        train = read_train_csv(d.train_csv, d.image_root, check_images=False)
        lists.append((f"train ({d.train_csv})", [Path(d.image_root) / p
                                                 for p in train["image_path"]]))
        test = read_test_csv(d.test_csv, d.test_image_root, check_images=False)
        lists.append((f"test ({d.test_csv})", [Path(d.test_image_root) / p
                                               for p in test["image_path"]]))
    except DataError as err:
        notes.append(f"cannot match caches to the data: {err}")
    for label, paths in lists:
        resolved = [p.resolve() for p in paths]
        keys: dict[int, str] = {}
        for c in caches:
            if c.n_images != len(paths):
                continue
            if c.img_size not in keys:
                try:
                    keys[c.img_size] = _cache_key(resolved, c.img_size)
                except DataError:  # an image is gone: no cache of this list can be current
                    keys[c.img_size] = ""
            if keys[c.img_size] and c.path.name.removeprefix(".").startswith(
                    f"images_{c.n_images}x{c.img_size}_{keys[c.img_size]}"):
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


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _ago(t: float, now: float) -> str:
    s = max(0.0, now - t)
    if s < 3600:
        return f"{s / 60:.0f} min ago"
    if s < 86400 * 2:
        return f"{s / 3600:.0f} h ago"
    return f"{s / 86400:.0f} d ago"


# ---------------------------------------------------------------- CLI


_HELP = """\
Image caches: load_images decodes and resizes every image once per img_size into a
memory-mapped .npy file that every trial and epoch reads: N x S x S x 3 bytes (the
competition's 15,021 + 10,014 images: 3.77 GB at 224 px, 6.6 GB + 4.4 GB at 384 px).
They live in data.cache_dir, by default <train_csv folder>/.cache; nothing removes them.

A cache that a process on this machine has mapped (a running sweep, trial or predict) is
never removed. Processes on other nodes of a Ray cluster that share the folder are not
seen: stop sweeps there first. Removing a cache a later sweep needs only costs its rebuild
(about a minute per 10,000 images per core).
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
    return run_cli("sketchtune.cache", _main, args, (ConfigError, DataError))


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
    now = time.time()
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"cache folder(s): {', '.join(map(str, dirs))}")
    if not caches:
        print("no image caches")
        return 0
    rows = [("img_size", "images", "disk", "last used", "data set", "in use", "file")]
    for c in caches:
        use = (f"pid {', '.join(map(str, c.users))}" if c.users else "no")
        if c.partial:
            use = f"building (pid {c.partial_pid})" if _pid_alive(c.partial_pid or 0) else \
                "partial: its builder died"
        rows.append((str(c.img_size), f"{c.n_images:,}", _size(c.bytes), _ago(c.last_used, now),
                     c.dataset or "unknown (give CONFIG)", use, str(c.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    print(f"total: {len(caches)} file(s), {_size(sum(c.bytes for c in caches))}")
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
        print(f"{'would remove' if args.dry_run else 'removed'} {c.path} ({_size(c.bytes)})")
        if not args.dry_run:
            try:
                c.path.unlink()
            except FileNotFoundError:
                continue
            except OSError as err:
                raise ConfigError(f"{c.path}: cannot be removed ({err.strerror or err})") from None
        freed += c.bytes
    verb = "would free" if args.dry_run else "freed"
    print(f"{verb} {_size(freed)}; {len(chosen) - len(kept)} of {len(caches)} cache file(s)")
    for k in kept:
        print(f"kept {k}: stop that process first", file=sys.stderr)
    return 0 if not kept else 1


if __name__ == "__main__":
    raise SystemExit(main())
