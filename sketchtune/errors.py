"""One-line error text: the first line of a library's error, and the root cause under wrappers."""

from __future__ import annotations

__all__ = ["first_line", "root_cause"]


def first_line(err: BaseException | str, limit: int = 160) -> str:
    """The first non-empty line of an error's text (its type name if it has none), cut to `limit`.

    Library errors (Ray's, MLflow's, YAML's) span many lines; a one-line message quotes this.
    It lives here, not in `cli`, so that `config` (which `cli` imports) can use it too.
    """
    text = str(err).strip()
    line = text.splitlines()[0].strip() if text else type(err).__name__
    return line[:limit]


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
