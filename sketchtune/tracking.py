"""MLflow tracking: a failure-tolerant client for one experiment; no Ray in here."""

from __future__ import annotations

import logging
import os
import re
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from .errors import TrackingError, first_line
from .writer import BackgroundWriter

__all__ = ["METRIC_KEYS", "TrackingError", "Tracker", "artifact_location", "check_tracking",
           "flatten"]

_log = logging.getLogger(__name__)

# The flat metric names logged per epoch; Ray's bookkeeping keys (pid, timestamp, ...) are not.
# ema_*: the EMA weights' validation, with `train.ema` on.
METRIC_KEYS = ("train_loss", "val_loss", "val_acc", "lr", "images_per_s", "epoch_time_s",
               "best_val_acc", "ema_val_loss", "ema_val_acc")

PARENT_TAG = "sketchtune.role"

# A server that failed this many calls in a row is left alone for PAUSE_S (Tracker.safe).
FAILURES_IN_A_ROW = 3
PAUSE_S = 60.0



def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """With a sqlite store, artifacts go beside the database (MLflow's own layout,
    <root>/mlruns/<experiment>) rather than under whatever the working directory is."""
    if tracking_uri.startswith("sqlite:///"):
        root = Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlruns"
        return f"{root}/{experiment}"
    return None


def check_tracking(tracking_uri: str, where: str = "config") -> None:
    """Fail fast, before any trial, when the tracking store cannot be reached; the one-line
    TrackingError names `where` (the config file) and the cause."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        if not db.exists():
            # Connecting would create the database (and log about it) before the data is
            # validated, so a bad input would leave it behind; a writable folder is enough.
            if not db.parent.is_dir() or not os.access(db.parent, os.W_OK | os.X_OK):
                raise TrackingError(f"{where}: tracking_uri {tracking_uri!r}: cannot create the "
                                    f"database in {db.parent}; make that folder writable or "
                                    "set tracking_uri elsewhere")
            return
    if tracking_uri.startswith(("http://", "https://")):
        # One quick try instead of MLflow's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        # Against a server MLflow prints two "View run/experiment at" lines per ended run (one
        # per trial, through Tune's table) and fetches the run again to do so; the sweep
        # prints its own UI hint at the end.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        MlflowClient(tracking_uri).search_experiments(max_results=1)
    except Exception as err:  # the client raises many types: connection, sqlalchemy, MLflow
        # An HTTP client's error buries its cause ("[Errno 111] Connection refused") at the end.
        cause = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(err))
        why = cause.group(1).strip() if cause else first_line(err)
        raise TrackingError(f"{where}: tracking_uri {tracking_uri!r}: MLflow is not reachable "
                            f"({why})") from None


class Tracker:
    """A thin, failure-tolerant wrapper of MlflowClient for one experiment.

    Every call after the start-up check is best effort: when the server goes away in the
    middle of a sweep, training goes on and the calls that failed are counted and named.
    The methods call MLflow at once; `submit` queues any of them for the tracker's one writer
    thread instead (`writer`), for callers that must not wait on the server (the sweep's Ray
    Tune callback), and `flush`/`close` wait for what was queued.
    """

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_location(tracking_uri, experiment))
        else:
            self.experiment_id = exp.experiment_id
        self.failures: list[str] = []
        self._in_a_row, self._paused_until = 0, 0.0
        self.writer = BackgroundWriter(name="mlflow-writer")
        _live[(tracking_uri, experiment)] = self

    def __reduce__(self) -> tuple[Callable[..., Tracker], tuple[str, str]]:
        # Tune pickles the sweep's callbacks with its experiment (tuner.pkl) and unpickles them
        # when the stage is resumed: the restored callback must log through this process's live
        # tracker (its queue, its failure count, which the sweep flushes and reports), not
        # through a copy of the one that pickled it.
        return _tracker_for, (self.tracking_uri, self.experiment)

    def submit(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run `fn(...)` on the writer thread, after what was queued before; an error is a
        failure named `what`."""
        if not self.writer.submit(self._run_queued, what, fn, *args, **kwargs):
            self.failures.append(f"{what} (queue full)")

    def flush(self) -> bool:
        """Wait for the queued calls; False if the server stopped answering (BackgroundWriter)."""
        return self.writer.flush()

    def close(self) -> None:
        """Write what is queued and stop the writer thread; calls it could not write (the
        server stopped answering) count as failures."""
        left = self.writer.close()
        self.failures.extend(["write queued calls"] * left)

    def safe(self, what: str, fn, *args, **kwargs) -> Any:
        """`fn(...)`, or None when it raised: counted in `failures`, the first one logged.

        After FAILURES_IN_A_ROW failures in a row the server is taken for gone and calls are
        counted as failed without being made for PAUSE_S: against a server that hangs, each
        call would wait out its timeout, and the writer's queue (and the sweep's end, which
        waits for it) would take that long per call.
        """
        if time.monotonic() < self._paused_until:
            self.failures.append(what)
            return None
        try:
            out = fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            self._failed(what, err)
            self._in_a_row += 1
            if self._in_a_row >= FAILURES_IN_A_ROW:
                self._paused_until = time.monotonic() + PAUSE_S
            return None
        self._in_a_row = 0
        return out

    def _failed(self, what: str, err: Exception) -> None:
        if not self.failures:
            _log.warning("MLflow: could not %s (%s); training goes on", what,
                         first_line(err, 120))
        self.failures.append(what)

    def _run_queued(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        # Not `safe`: a queued job (the callback's) makes its MLflow calls through `safe`
        # itself, and its own bookkeeping must run even while those calls are paused.
        try:
            fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            self._failed(what, err)

    def find_run(self, **tags: str) -> Any:
        filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=filt,
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def open_runs(self, **tags: str) -> list[Any]:
        """Every RUNNING run whose tags match `tags` (one search, paged by MLflow's client)."""
        filt = " and ".join([*(f"tags.`{k}` = '{v}'" for k, v in tags.items()),
                             "attributes.status = 'RUNNING'"])
        return list(self.client.search_runs([self.experiment_id], filter_string=filt,
                                            max_results=50_000))

    def get_or_create_run(self, name: str, tags: dict[str, str], key: dict[str, str],
                          reuse_failed: bool = False) -> tuple[str, bool]:
        """The run whose tags match `key`, unless it failed; else a new one. (run_id, created)."""
        run = self.find_run(**key)
        if run is not None and (reuse_failed or run.info.status not in ("FAILED", "KILLED")):
            return run.info.run_id, False
        run = self.client.create_run(self.experiment_id, run_name=name, tags={**tags, **key})
        return run.info.run_id, True

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        self.safe("log metrics", self.client.log_batch, run_id, metrics=batch)

    def log_steps(self, run_id: str, steps: list[tuple[int, int, dict[str, float]]]) -> None:
        """Several steps' metrics in as few requests as MLflow allows: (timestamp ms, step,
        {name: value}) each."""
        batch = [Metric(k, float(v), ts, step) for ts, step, metrics in steps
                 for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):  # MLflow's batch limit for metrics
            self.safe("log metrics", self.client.log_batch, run_id, metrics=batch[i:i + 1000])

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.safe("log params", self.client.log_batch, run_id, params=items[i:i + 100])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.safe("set tags", self.client.log_batch, run_id,
                  tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.safe("end a run", self.client.set_terminated, run_id, status)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.safe("log an artifact", self.client.log_artifact, run_id, str(path), artifact_path)


# The tracker each (tracking URI, experiment) was last opened with in this process.
_live: weakref.WeakValueDictionary[tuple[str, str], Tracker] = weakref.WeakValueDictionary()


def _tracker_for(tracking_uri: str, experiment: str) -> Tracker:
    """This process's tracker for the experiment, or a new one (an unpickled Tracker)."""
    live = _live.get((tracking_uri, experiment))
    return live if live is not None else Tracker(tracking_uri, experiment)
