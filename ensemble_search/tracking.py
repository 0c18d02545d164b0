"""MLflow for the ensemble CLIs: one run per command in the sweep's experiment, best effort.

Only `optimize` and `predict` import this module; the library modules stay free of MLflow.
If the tracking store cannot be reached, the files are still written and the caller says
so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["log_run"]

_log = logging.getLogger(__name__)


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    # The sweep's own layout (sketchtune.tracking): artifacts beside the sqlite database.
    if tracking_uri.startswith("sqlite:///"):
        root = Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlruns"
        return f"{root}/{experiment}"
    return None


def log_run(
    tracking_uri: str, experiment: str, run_name: str, params: dict[str, object],
    metrics: dict[str, float], artifacts: Iterable[Path], tags: dict[str, str] | None = None,
) -> tuple[str | None, str]:
    """Log one finished run. Returns (run_id, "") or (None, one-line reason it failed)."""
    if tracking_uri.startswith(("http://", "https://")):
        # One quick try instead of MLflow's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    client, run_id = None, None
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(
            experiment, artifact_location=_artifact_location(tracking_uri, experiment))
        all_tags = {"stage": "ensemble", **(tags or {})}
        run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
        run_id = run.info.run_id
        ts = int(run.info.start_time)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in all_tags.items()],
        )
        for path in artifacts:
            client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FINISHED")
        return run_id, ""
    except Exception as err:  # noqa: BLE001 - the client raises many types; files are written
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        if run_id is not None:
            try:
                client.set_terminated(run_id, "FAILED")
            except Exception:  # noqa: BLE001 - already failing; the warning says why
                pass
        _log.warning("MLflow: could not log to %s (%s)", tracking_uri, first)
        return None, first
