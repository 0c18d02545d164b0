"""What every CLI shares: the config argument, --sweep, --set and --quiet, and config loading."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from . import fs
from .config import SweepConfig, load_config
from .errors import USER_ERRORS, ConfigError, first_line
from .fs import is_uri, location

__all__ = ["EPILOG", "OneLineParser", "add_debug_argument", "base_parser", "fail",
           "load_sweep_config", "location_arg", "resolve_arg", "run_cli", "setup_logging",
           "size_text"]

DEBUG_ENV = "SKETCHTUNE_DEBUG"  # =1 shows the traceback of an unexpected error, like --debug

# The forms of --set that are not obvious from `key=value`; README "Config" says the same.
EPILOG = """\
Every config key, its default and why: docs/config.md.
--set values are YAML: --set train.epochs=1, --set 'search.space={optim.lr: {type: loguniform,
low: 1e-4, high: 1e-2}}' (a flow mapping replaces the whole space), --set
search.space.optim.lr.high=1e-2 (one field of a dimension: keys of search.space and of
candidates contain dots, the longest one matching is used), --set candidates.0.optim.lr=3e-4.
"""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (`prog: error: msg`, exit 2), without usage.

    argparse prints the whole usage block before the error; in a log of many commands that
    buries the line that says what is wrong. `--help` is unchanged.
    """

    def error(self, message: str) -> NoReturn:
        # The same `module: error:` prefix as the CLIs' own one-line errors (`fail`).
        prog = self.prog.removeprefix("python -m ")
        self.exit(2, f"{prog}: error: {message} (see --help)\n")


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with the options all four commands take, the same way, with their defaults."""
    p = OneLineParser(prog=f"python -m {prog}", description=description,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      epilog=EPILOG)
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
        d = location_arg(args.sweep, "--sweep")
        if must_exist and not fs.is_dir(d):
            raise ConfigError(f"{d}: --sweep folder not found; run the sweep first")
        cfg = cfg.model_copy(update={"storage_path": d.parent, "name": d.name})
    return cfg


def resolve_arg(path: str | Path, option: str) -> Path:
    """`path` made absolute; a symlink loop is a ConfigError naming `option` (Python 3.11's
    `resolve` raises RuntimeError for one, later versions OSError)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as err:
        raise ConfigError(f"{path}: {option}: cannot resolve the path ({first_line(err)})") \
            from None


def location_arg(value: str, option: str) -> fs.Location:
    """A command-line folder or file that may be a storage URI: a URI as it is, a local path
    made absolute. A ConfigError naming `option` for one that is neither (`s3://` without a
    bucket, `gs:/x`, `file://relative/x`, an `ftp://` URI), which would otherwise be a
    traceback or a local folder named `gs:`."""
    try:
        loc = location(value)
    except ValueError as err:
        raise ConfigError(f"{value}: {option}: {err}") from None
    return loc if is_uri(loc) else resolve_arg(loc, option)


def size_text(n: float | None) -> str:
    """Bytes for a person: '512 B', '3.8 GB'; 'unknown' for None."""
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def setup_logging(quiet: bool, prog: str) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format=f"{prog}: %(message)s", stream=sys.stderr)
    # Library chatter that says nothing a user acts on (table creation and the like). MLflow
    # sets its loggers' level from MLFLOW_LOGGING_LEVEL when it is imported, after this.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def fail(prog: str, err: BaseException | str) -> int:
    """Print a user error as one line on stderr; the exit status for it."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2


def add_debug_argument(p: argparse.ArgumentParser) -> None:
    """--debug: show the traceback of an unexpected error (also SKETCHTUNE_DEBUG=1)."""
    p.add_argument("--debug", action="store_true",
                   help=f"show the full traceback of an unexpected error (or {DEBUG_ENV}=1)")


def run_cli(prog: str, body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """`body(args)` with the CLI contract around it; returns the exit status.

    A user error (`errors.USER_ERRORS`) is one line on stderr, status 2. Ctrl-C is one
    line, status 130. Anything else is a bug or an environment problem: one line naming its
    type and its file when the error carries one, status 1; the traceback goes before it with
    `args.debug` (see `add_debug_argument`) or SKETCHTUNE_DEBUG=1.
    """
    try:
        return body(args)
    except USER_ERRORS as err:
        return fail(prog, err)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the last resort: one line instead of a traceback
        if getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exc()
        where = getattr(err, "filename", None)
        where = f" ({where})" if where else ""
        print(f"{prog}: unexpected {type(err).__name__}{where}: {first_line(err)} "
              f"(traceback: --debug or {DEBUG_ENV}=1)", file=sys.stderr)
        return 1
