"""Ray Tune's per-trial progress table, the same for both stages; a node column on a cluster."""

from __future__ import annotations

from typing import Any

from .job import FOLD_COLUMN

__all__ = ["alive_nodes", "build_reporter"]


def alive_nodes() -> int:
    """How many nodes of the Ray this process is connected to are alive (1: one machine)."""
    import ray

    return len([n for n in ray.nodes() if n["Alive"]])


def build_reporter(nodes: int = 1, max_report_frequency: int = 15) -> Any:
    """A `CLIReporter` whose table has one row per trial: fold, epoch, val_acc, best,
    backbone, candidate, and, when the cluster has more than one node, the node's IP (Ray
    adds `node_ip` to every result).

    `print_intermediate_tables=True`, always: Tune's default reads its global verbosity when
    the reporter is made. The search stage's reporter was made at Tune's import-time default
    (3: tables), but `tune.run` then set it to `ray.verbose` (1), so the cv stage's reporter,
    made after, printed one count line per report ("Number of trials: 16/17 (2 PENDING, 2
    RUNNING, 12 TERMINATED)") for all of its minutes.
    """
    from ray import tune

    metrics = {"epoch": "epoch", "val_acc": "val_acc", "best_val_acc": "best"}
    reporter = tune.CLIReporter(
        metric_columns=metrics,
        parameter_columns={FOLD_COLUMN: "fold"},
        max_report_frequency=max_report_frequency,  # seconds between tables: one screen each
        max_column_length=32,
        print_intermediate_tables=True,
    )
    reporter.add_metric_column("backbone")
    reporter.add_metric_column("candidate_id", "candidate")
    if nodes > 1:
        reporter.add_metric_column("node_ip", "node")
    return reporter
