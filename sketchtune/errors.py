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
    """The first non-empty line of an error's text (its type name if it has none), cut to `limit`.

    Library errors (Ray's, MLflow's, YAML's) span many lines; a one-line message quotes this.
    """
    text = str(err).strip()
    line = text.splitlines()[0].strip() if text else type(err).__name__
    if len(line) <= limit:
        return line
    return line[:limit - 3].rsplit(" ", 1)[0].rstrip(",;:(") + "..."  # never mid-word


def root_cause(err: BaseException) -> BaseException:
    """The error a wrapper carries: Ray's `RayTaskError.cause`, else `__cause__`, innermost first.

    A trial's own error reaches the driver wrapped in Ray's ("ray::ImplicitFunc.train() (pid=..,
    ip=..)" and a remote traceback); the user acts on the error inside.
    """
    seen: set[int] = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = getattr(err, "cause", None) or getattr(err, "__cause__", None)
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
