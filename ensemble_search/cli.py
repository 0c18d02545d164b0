"""What the two ensemble CLIs share: options, config loading, one-line errors, file output."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from sketchtune.config import ConfigError, SweepConfig, load_config
from sketchtune.store import StoreError, atomic_write_bytes

from .load import EnsembleError

__all__ = ["USER_ERRORS", "base_parser", "load_sweep_config", "run_main", "write_files"]

# The errors a user can cause; each becomes one line on stderr and exit status 2.
USER_ERRORS = (ConfigError, StoreError, EnsembleError)


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("config", nargs="?", default="configs/sweep.yaml", help="the sweep's config")
    p.add_argument("--sweep", metavar="DIR", default=None,
                   help="the sweep folder (overrides storage_path/name of the config)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="dotted override of the config, repeatable (e.g. ensemble.method=greedy)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default: <sweep folder>/ensemble)")
    p.add_argument("--quiet", action="store_true", help="print only warnings and errors")
    return p


def load_sweep_config(args: argparse.Namespace) -> SweepConfig:
    """The config with --set applied; --sweep DIR makes DIR the sweep folder (name = its name)."""
    cfg = load_config(args.config, args.set or None)
    if args.sweep:
        d = Path(args.sweep).resolve()
        if not d.is_dir():
            raise EnsembleError(f"{d}: --sweep folder not found")
        cfg = cfg.model_copy(update={"storage_path": d.parent, "name": d.name})
    return cfg


def out_dir(args: argparse.Namespace, cfg: SweepConfig) -> Path:
    return Path(args.out).resolve() if args.out else cfg.sweep_dir / "ensemble"


def write_files(folder: Path, files: dict[str, bytes]) -> list[Path]:
    """Write every file atomically (temp + rename); call only once all checks have passed."""
    paths = []
    for name, data in files.items():
        atomic_write_bytes(folder / name, data)
        paths.append(folder / name)
    return paths


def run_main(prog: str, body: Callable[[argparse.Namespace], int],
             args: argparse.Namespace) -> int:
    """Run a CLI body: user errors and unwritable outputs become one stderr line and status 2."""
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format=f"{prog}: %(message)s", stream=sys.stderr)
    try:
        return body(args)
    except USER_ERRORS as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk or a read-only folder, named by the OS error
        print(f"{prog}: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 2
