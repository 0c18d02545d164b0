"""What the two ensemble CLIs share: options, config loading, one-line errors, file output."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from sketchtune.cli import base_parser as shared_parser
from sketchtune.cli import fail, setup_logging
from sketchtune.cli import load_sweep_config as shared_load
from sketchtune.config import ConfigError, SweepConfig
from sketchtune.store import StoreError, atomic_write_bytes

from .load import EnsembleError

__all__ = ["USER_ERRORS", "base_parser", "load_sweep_config", "run_main", "write_files"]

# The errors a user can cause; each becomes one line on stderr and exit status 2.
USER_ERRORS = (ConfigError, StoreError, EnsembleError)


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every sketchtune CLI takes, plus --out."""
    p = shared_parser(prog, description)
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default: <sweep folder>/ensemble)")
    return p


def load_sweep_config(args: argparse.Namespace) -> SweepConfig:
    """The config with --set applied; --sweep DIR (which must exist) is the sweep folder."""
    return shared_load(args, must_exist=True)


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
    setup_logging(args.quiet, prog)
    try:
        return body(args)
    except USER_ERRORS as err:
        return fail(prog, err)
    except OSError as err:  # a full disk or a read-only folder, named by the OS error
        print(f"{prog}: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 2
