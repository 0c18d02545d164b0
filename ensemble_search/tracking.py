"""MLflow for the ensemble CLIs: one run per command in the sweep's experiment, best effort.

Only `optimize` and `predict` import this module; the library modules stay free of MLflow.
If the tracking store cannot be reached, the files are still written and the caller says so.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

from sketchtune import fs
from sketchtune.errors import first_line
from sketchtune.fs import URI
from sketchtune.tracking import Tracker, check_tracking

__all__ = ["log_run"]

_log = logging.getLogger(__name__)


def log_run(
    tracking_uri: str, experiment: str, run_name: str, params: dict[str, object],
    metrics: dict[str, float], artifacts: Iterable[Path | URI], tags: dict[str, str] | None = None,
) -> tuple[str | None, str]:
    """Log one finished run. Returns (run_id, "") or (None, one-line reason it failed)."""
    try:
        check_tracking(tracking_uri)  # a quick, single try against a server
        tracker = Tracker(tracking_uri, experiment)
        all_tags = {"stage": "ensemble", **(tags or {})}
        run = tracker.client.create_run(tracker.experiment_id, run_name=run_name, tags=all_tags)
    except Exception as err:  # noqa: BLE001 - the client raises many types; files are written
        first = first_line(err, 200)
        _log.warning("MLflow: could not log to %s (%s)", tracking_uri, first)
        return None, first
    run_id = run.info.run_id
    tracker.log_params(run_id, {k: str(v) for k, v in params.items()})
    tracker.log_metrics(run_id, metrics, step=0)
    with tempfile.TemporaryDirectory(prefix="sketchtune-artifacts-") as tmp:
        for path in artifacts:
            if isinstance(path, URI):  # MLflow logs local files: a cloud one is fetched first
                local = Path(tmp) / path.name
                local.write_bytes(fs.read_bytes(path))
                path = local
            tracker.log_artifact(run_id, Path(path))
    ok = not tracker.failures
    tracker.end(run_id, "FINISHED" if ok else "FAILED")
    if not ok:
        return None, f"{len(tracker.failures)} call(s) failed: {', '.join(tracker.failures)}"
    return run_id, ""
