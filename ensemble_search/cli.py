"""What the two ensemble CLIs share: options, config loading, one-line errors, file output."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from sketchtune.cli import add_debug_argument, location_arg, run_cli, setup_logging
from sketchtune.cli import base_parser as shared_parser
from sketchtune.cli import load_sweep_config as shared_load
from sketchtune.config import SweepConfig
from sketchtune.errors import EnsembleError
from sketchtune.fs import URI, Location

from .output import write_file_set, write_object_set

__all__ = ["base_parser", "load_sweep_config", "run_main", "write_files"]

def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every sketchtune CLI takes, plus --out and --debug."""
    p = shared_parser(prog, description)
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default: <sweep folder>/ensemble)")
    add_debug_argument(p)
    return p


def load_sweep_config(args: argparse.Namespace) -> SweepConfig:
    """The config with --set applied; --sweep DIR (which must exist) is the sweep folder."""
    return shared_load(args, must_exist=True)


def out_dir(args: argparse.Namespace, cfg: SweepConfig) -> Location:
    if args.out:
        return location_arg(args.out, "--out")
    return cfg.sweep_dir / "ensemble"


def write_files(folder: Location, files: dict[str, bytes]) -> list[Location]:
    """Write the output set whole or not at all (see `output.write_file_set`); call only once
    all checks have passed. Files of `folder` that the set does not replace are kept."""
    if isinstance(folder, URI):
        return write_object_set(folder, files)
    return write_file_set(folder, files)


def run_main(prog: str, body: Callable[[argparse.Namespace], int],
             args: argparse.Namespace) -> int:
    """Run a CLI body under `sketchtune.cli.run_cli`: a user error (bad input, an unwritable
    or unreadable file) is one stderr line and status 2; anything else one line naming its
    type, status 1, its traceback with --debug or SKETCHTUNE_DEBUG=1."""
    setup_logging(args.quiet, prog)

    def guarded(a: argparse.Namespace) -> int:
        try:
            return body(a)
        except OSError as err:  # a folder given as a file, a permission: the OS names it
            raise EnsembleError(f"{err.filename or ''}: {err.strerror or err}".lstrip(": ")) \
                from None

    return run_cli(prog, guarded, args)
