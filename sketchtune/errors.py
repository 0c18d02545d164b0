"""Every error a user can cause, and one-line error text: the bottom layer of both packages.

A user error (`USER_ERRORS`) is printed by every CLI as one line naming the problem and the
file, exit status 2; anything else is a bug or the environment's (`cli.run_cli`).
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["USER_ERRORS", "ConfigError", "DataError", "DemoError", "EnsembleError", "ModelError",
           "StoreError", "TrackingError", "first_line", "root_cause", "show"]


class ConfigError(ValueError):
    """A config file, an override or a command-line option is wrong."""


class DataError(ValueError):
    """A train/test CSV or an image file is wrong."""


class ModelError(ValueError):
    """A model cannot be built as configured (unknown backbone, weights not found)."""


class StoreError(ValueError):
    """A storage location or the prediction store is missing something or inconsistent."""


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used."""


class EnsembleError(ValueError):
    """Bad input to the ensemble search (predictions, ensemble.json, test.csv)."""


class DemoError(ValueError):
    """A bad argument to the demo data maker, or a folder in its way."""


USER_ERRORS = (ConfigError, DataError, ModelError, StoreError, TrackingError, EnsembleError,
               DemoError)


def first_line(err: BaseException | str, limit: int = 160) -> str:
    """The line of an error's text that carries its cause (its type name if it has no text),
    cut to `limit` at a word.

    Library errors (Ray's, MLflow's, YAML's) span many lines, and some open with a header
    ("Unable to set up cluster storage with the following settings:", a quoted "Traceback
    (most recent call last):") whose cause follows it: headers (ending in ':'), indented lines
    (a traceback's frames, a repr's fields) and lone brackets are skipped; the first line is
    the answer when nothing else is left.
    """
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    causes = [line.strip() for line in lines if not (
        line[0].isspace() or line.rstrip().endswith((":", "<", "(", "[", "{"))
        or line.strip() in (">", ")", "]", "}"))]
    line = (causes or lines or [type(err).__name__])[0].strip()
    if len(line) <= limit:
        return line
    return line[:limit - 3].rsplit(" ", 1)[0].rstrip(",;:(") + "..."  # never mid-word


def root_cause(err: BaseException) -> BaseException:
    """The error a wrapper carries, innermost first: Ray's `RayTaskError.cause`, else
    `__cause__`, else `__context__` unless suppressed (`raise ... from None`); a user error
    ends the search, its message being the line a user acts on.

    A trial's own error reaches the driver wrapped in Ray's ("ray::ImplicitFunc.train() (pid=..,
    ip=..)" and a remote traceback), and Ray wraps its own ("Failed to connect to Ray cluster"
    over the authentication error it met).
    """
    seen: set[int] = set()
    while id(err) not in seen and not isinstance(err, USER_ERRORS):
        seen.add(id(err))
        inner = getattr(err, "cause", None) or err.__cause__
        if inner is None and not err.__suppress_context__:
            inner = err.__context__
        if not isinstance(inner, BaseException):
            break
        err = inner
    return err


def show(x: Any) -> str:
    """One value for a message: an int plainly (not np.int64(0)), anything else quoted, so a
    trailing space shows (not np.str_('a '))."""
    if isinstance(x, numbers.Integral) and not isinstance(x, bool):  # numpy's ints are Integral
        return str(int(x))
    return repr(str(x))
