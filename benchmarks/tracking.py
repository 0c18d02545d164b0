"""Tracking on the driver: time per `on_trial_result` with 16 concurrent trials, sync vs async.

    python benchmarks/tracking.py [--trials 16] [--epochs 20] [--interval 1.0]
                                  [--stores sqlite,server] [--json out.json] [--smoke-test]

The sweep's MLflow callback (`sketchtune.callback.MlflowSweepCallback`) is driven the way
Ray Tune drives it on its driver loop, without Ray and without training: `--trials` fake
trials start together, each reports one epoch's result (train_loss, val_loss, val_acc, lr,
...) every `--interval` seconds, their reports spread evenly over the interval, then each
completes, and the stage ends (`on_experiment_end`). Every hook call is timed on the driver.

Two modes, side by side, against the same store:

* sync: the old behaviour, every MLflow call made inside the hook (a Tracker whose `submit`
  runs the call at once);
* async: the shipped behaviour, the hook queues the call for the tracker's writer thread;
  the stage's end waits for the queue (`flush at end`).

Two stores: `sqlite` (MLflow's default, a local `mlflow.db`) and `server` (a local
`mlflow server` process this script starts on a free port, backend sqlite in a temp dir,
stopped at the end), the setting that issue #13 measured at 1 s per result.

After each run, every trial's metric history is read back (`MlflowClient.get_metric_history`)
and counted: any lost metric makes the script exit 1. The driver's lag (how far behind its
schedule the simulated loop ended: the time the hooks stole from scheduling) is reported too.
Goal: <= 5 ms median per `on_trial_result`, zero lost.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sketchtune.callback import MlflowSweepCallback  # noqa: E402
from sketchtune.config import TrainConfig  # noqa: E402
from sketchtune.store import PredictionStore  # noqa: E402
from sketchtune.tracking import Tracker, check_tracking  # noqa: E402

KEYS = ("train_loss", "val_loss", "val_acc", "lr", "images_per_s", "epoch_time_s",
        "best_val_acc")  # what one trial reports per epoch (sketchtune.tracking.METRIC_KEYS)
TRAIN = TrainConfig(model={"name": "resnet50"}).model_dump(mode="json")  # 40 params, as a trial


class SyncTracker(Tracker):
    """The old callback's behaviour: every MLflow call made on the driver, inside the hook."""

    def submit(self, what, fn, *args, **kwargs) -> None:
        self.safe(what, fn, *args, **kwargs)


def describe(config: dict[str, Any]) -> dict[str, Any]:
    return {"candidate_id": f"c{config['fold']:04d}", "backbone": "resnet50",
            "fold": config["fold"], "train": TRAIN}


def result(trial: int, epoch: int) -> dict[str, Any]:
    """One epoch's result as Ray delivers it: the trainer's metrics plus Ray's own keys."""
    acc = min(0.99, 0.1 + 0.04 * epoch + 0.001 * trial)
    return {"epoch": epoch, "train_loss": 2.0 / epoch, "val_loss": 2.2 / epoch, "val_acc": acc,
            "best_val_acc": acc, "lr": 1e-3 / epoch, "images_per_s": 900.0,
            "epoch_time_s": 1.0, "training_iteration": epoch, "pid": 4242,
            "timestamp": int(time.time()), "time_this_iter_s": 1.0, "node_ip": "127.0.0.1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(work: Path) -> tuple[subprocess.Popen, str]:
    """A local `mlflow server` on a free port, sqlite backend in `work`; waits until it answers."""
    port = free_port()
    log = open(work / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{work / 'server.db'}",
         "--default-artifact-root", str(work / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"tracking.py: mlflow server exited ({work / 'server.log'})")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise SystemExit(f"tracking.py: mlflow server did not answer in 180 s ({work / 'server.log'})")


def stop_server(proc: subprocess.Popen) -> None:
    # Its own session: the server and the workers it forked, nothing else.
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def simulate(uri: str, mode: str, store_dir: Path, trials: int, epochs: int,
             interval: float) -> dict[str, Any]:
    """One stage of `trials` trials through the callback; hook timings and metrics counted."""
    check_tracking(uri)  # as the sweep's pre-flight: one quick try, short HTTP timeouts
    tracker = (SyncTracker if mode == "sync" else Tracker)(uri, f"bench-{mode}")
    parent, _ = tracker.get_or_create_run(f"sweep-{mode}", {}, {"sketchtune.role": "sweep"})
    cb = MlflowSweepCallback(tracker, parent, "cv", PredictionStore(store_dir), describe)
    fake = [SimpleNamespace(trial_id=f"t{i:02d}", config={"fold": i}, path=None)
            for i in range(trials)]
    timings: dict[str, list[float]] = {"start": [], "result": [], "complete": []}

    def timed(kind: str, fn, *args) -> None:
        t0 = time.perf_counter()
        fn(*args)
        timings[kind].append(time.perf_counter() - t0)

    t_begin = time.perf_counter()
    for t in fake:
        timed("start", cb.on_trial_start, 0, fake, t)
    # Trial i reports epoch e at (e - 1 + i / trials) * interval after the start.
    schedule = sorted(((e - 1 + i / trials) * interval, e, i)
                      for e in range(1, epochs + 1) for i in range(trials))
    for at, epoch, i in schedule:
        wait = t_begin + at - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        timed("result", cb.on_trial_result, epoch, fake, fake[i], result(i, epoch))
        if epoch == epochs:
            timed("complete", cb.on_trial_complete, epoch, fake, fake[i])
    lag = time.perf_counter() - (t_begin + schedule[-1][0])
    t0 = time.perf_counter()
    cb.on_experiment_end(fake)
    flush = time.perf_counter() - t0
    tracker.close()

    expected = trials * epochs * len(KEYS)
    found = sum(len(tracker.client.get_metric_history(cb.runs[t.trial_id], key))
                for t in fake if t.trial_id in cb.runs for key in KEYS)
    ms = sorted(x * 1e3 for x in timings["result"])
    return {
        "mode": mode, "results": len(ms),
        "median_ms": statistics.median(ms), "p95_ms": ms[int(0.95 * (len(ms) - 1))],
        "max_ms": ms[-1], "start_median_ms": statistics.median(timings["start"]) * 1e3,
        "complete_median_ms": statistics.median(timings["complete"]) * 1e3,
        "driver_lag_s": lag, "flush_at_end_s": flush, "metrics_expected": expected,
        "metrics_found": found, "lost": expected - found, "failures": len(tracker.failures),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=16, help="concurrent trials (16)")
    p.add_argument("--epochs", type=int, default=20, help="results per trial (20)")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between one trial's results (1.0)")
    p.add_argument("--stores", default="sqlite,server", help="sqlite, server or both")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    p.add_argument("--smoke-test", action="store_true",
                   help="4 trials x 3 epochs, 0.05 s apart: seconds, to check the script")
    args = p.parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines: database set-up
    if args.smoke_test:
        args.trials, args.epochs, args.interval = 4, 3, 0.05
    stores = [s for s in args.stores.split(",") if s]
    if not stores or set(stores) - {"sqlite", "server"}:
        p.error(f"--stores: sqlite, server or both, got {args.stores!r}")

    print(f"{args.trials} trials x {args.epochs} results, one every {args.interval} s per "
          f"trial; {platform.node()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows = []
    for store in stores:
        with tempfile.TemporaryDirectory(prefix="tracking-bench-") as tmp:
            work = Path(tmp)
            server = None
            if store == "server":
                server, uri = start_server(work)
            else:
                uri = f"sqlite:///{work / 'mlflow.db'}"
            try:
                for mode in ("sync", "async"):
                    row = {"store": store, **simulate(uri, mode, work / f"store-{mode}",
                                                      args.trials, args.epochs, args.interval)}
                    rows.append(row)
                    print(f"  {store} {mode}: median {row['median_ms']:.3f} ms, lost "
                          f"{row['lost']}", flush=True)
            finally:
                if server is not None:
                    stop_server(server)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    cols = [("store", "store", "{}"), ("mode", "mode", "{}"), ("results", "results", "{}"),
            ("median_ms", "median ms", "{:.3f}"), ("p95_ms", "p95 ms", "{:.3f}"),
            ("max_ms", "max ms", "{:.3f}"), ("start_median_ms", "start ms", "{:.3f}"),
            ("complete_median_ms", "complete ms", "{:.3f}"),
            ("driver_lag_s", "driver lag s", "{:.2f}"),
            ("flush_at_end_s", "flush at end s", "{:.2f}"), ("lost", "lost", "{}")]
    print("| " + " | ".join(h for _, h, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(f.format(row[k]) for k, _, f in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    lost = sum(r["lost"] for r in rows)
    if lost:
        print(f"\ntracking.py: {lost} metric(s) lost", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
