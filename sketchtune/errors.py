"""One-line error text: the first line of a library's (often multi-line) error message."""

from __future__ import annotations

__all__ = ["first_line"]


def first_line(err: BaseException | str, limit: int = 160) -> str:
    """The first non-empty line of an error's text (its type name if it has none), cut to `limit`.

    Library errors (Ray's, MLflow's, YAML's) span many lines; a one-line message quotes this.
    It lives here, not in `cli`, so that `config` (which `cli` imports) can use it too.
    """
    text = str(err).strip()
    line = text.splitlines()[0].strip() if text else type(err).__name__
    return line[:limit]
