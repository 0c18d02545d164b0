"""Fault injection for reliability tests: make one trial fail on purpose, once.

Set `SKETCHTUNE_FAULT=<kind>:<epoch>:<marker file>` in the environment of the process that
starts Ray (workers inherit it). The first trial to finish epoch <epoch> creates the marker
and then fails: kind `raise` raises an exception, kind `exit` ends the worker process the way
the OOM killer would. Every later trial, the retried one included, sees the marker and runs
normally; a marker of `-` fails every trial at that epoch, retries included. Several faults,
separated by `;`, fail one trial each. Unset (the default), this does nothing.
"""

from __future__ import annotations

import os

__all__ = ["ENV", "InjectedFault", "maybe_fail"]

ENV = "SKETCHTUNE_FAULT"


class InjectedFault(RuntimeError):
    """The exception kind `raise` throws."""


def maybe_fail(epoch: int) -> None:
    for spec in filter(None, os.environ.get(ENV, "").split(";")):
        kind, at, marker = spec.split(":", 2)
        if epoch != int(at):
            continue
        if marker == "-":
            raise InjectedFault(f"injected fault at epoch {epoch} ({ENV}={spec})")
        try:
            # O_EXCL: exactly one trial on the machine wins the right to fail.
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        if kind == "exit":
            os._exit(137)
        raise InjectedFault(f"injected fault at epoch {epoch} ({ENV}={spec})")
