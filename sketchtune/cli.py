"""What every CLI shares: the config argument, --sweep, --set and --quiet, and config loading."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import ConfigError, SweepConfig, load_config
from .errors import first_line

__all__ = ["base_parser", "fail", "first_line", "load_sweep_config", "setup_logging"]


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with the options all four commands take, the same way, with their defaults."""
    p = argparse.ArgumentParser(prog=f"python -m {prog}", description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="Every config key, its default and why: docs/config.md")
    p.add_argument("config", nargs="?", default="configs/sweep.yaml", help="the sweep's config")
    p.add_argument("--sweep", metavar="DIR", default=None,
                   help="the sweep folder (overrides storage_path/name of the config)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="dotted override of the config, repeatable (e.g. train.optim.lr=3e-4)")
    p.add_argument("--quiet", action="store_true",
                   help="only warnings and errors: no progress table or bars (CI logs)")
    return p


def load_sweep_config(args: argparse.Namespace, *, must_exist: bool = False) -> SweepConfig:
    """The config with --set applied; --sweep DIR makes DIR the sweep folder (name = its name)."""
    cfg = load_config(args.config, args.set or None)
    if args.sweep:
        d = Path(args.sweep).resolve()
        if must_exist and not d.is_dir():
            raise ConfigError(f"{d}: --sweep folder not found; run the sweep first")
        cfg = cfg.model_copy(update={"storage_path": d.parent, "name": d.name})
    return cfg


def setup_logging(quiet: bool, prog: str) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format=f"{prog}: %(message)s", stream=sys.stderr)
    # Library chatter that says nothing a user acts on (table creation and the like).
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def fail(prog: str, err: BaseException | str) -> int:
    """Print a user error as one line on stderr; the exit status for it."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2
