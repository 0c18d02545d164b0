"""The stage planner: candidates, the search space as Ray domains, cv selection, cv jobs.

Trial configs have the shape `sketchtune.job` defines, shared with the trial.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import fs
from .config import (
    ParamSpec,
    SweepConfig,
    TrainConfig,
    candidate_id,
    with_train_overrides,
)
from .job import JOB, Job, job_of, trial_config
from .pseudo import ensemble_json, read_fold_weights
from .selection import greedy_members
from .store import PredictionStore

__all__ = ["Candidate", "config_digest", "cv_candidates", "cv_experiment_name", "cv_param_space",
           "describe_trial", "plan_cv_jobs", "probe_values", "pseudo_candidates", "rank_search",
           "search_experiment_name", "search_param_space", "search_space", "select_candidates",
           "select_ensemble", "select_top"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    params: dict[str, Any]  # dotted overrides of the base TrainConfig
    train: TrainConfig
    origin: str  # where it came from: "search", "fixed" (the YAML's candidates) or "base"

    @property
    def id(self) -> str:
        return candidate_id(self.train)

    @property
    def backbone(self) -> str:
        return self.train.model.name


# ---------------------------------------------------------------- the trial config shape


def search_param_space(cfg: SweepConfig) -> dict[str, Any]:
    """The search stage's param space: the sampled params on `search.fold`."""
    return trial_config(search_space(cfg.search.space), cfg.search.fold)


def cv_param_space(jobs: list[Job]) -> dict[str, Any]:
    """The cv stage's param space: one grid point per job."""
    from ray import tune

    return {JOB: tune.grid_search(jobs)}


def describe_trial(cfg: SweepConfig, config: dict[str, Any]) -> dict[str, Any]:
    """A trial config -> {candidate_id, backbone, fold, train (the resolved config as JSON)}."""
    job = job_of(config)
    train = with_train_overrides(cfg.train, job["params"], "trial config")
    return {"candidate_id": candidate_id(train), "backbone": train.model.name,
            "fold": job["fold"], "train": train.model_dump(mode="json")}


# ---------------------------------------------------------------- search stage


def probe_values(spec: ParamSpec) -> list[Any]:
    """The values a dimension can take at its ends (every value of a choice)."""
    if spec.type == "choice":
        return list(spec.values or [])
    if spec.type == "int":
        return [int(spec.low), int(spec.high)]
    return [spec.low, spec.high]


def search_space(space: dict[str, ParamSpec]) -> dict[str, Any]:
    """The YAML's dimensions as Ray Tune domains (OptunaSearch converts them to Optuna's)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, s in space.items():
        if s.type == "choice":
            out[key] = tune.choice(s.values)
        elif s.type == "loguniform":
            out[key] = tune.loguniform(s.low, s.high)
        elif s.type == "uniform":
            out[key] = tune.uniform(s.low, s.high)
        else:  # int: both ends included
            out[key] = tune.randint(int(s.low), int(s.high) + 1)
    return out


def rank_search(cfg: SweepConfig, results: Iterable[Any]) -> list[Candidate]:
    """Search results (Tune `Result`s) -> every distinct candidate, best first.

    Like with like: a trial ASHA let run further ranks above one it stopped early (whose
    val_acc is from fewer epochs); among equals, the higher best val_acc wins, then the
    earlier trial. Failed trials and trials without a result are left out.
    """
    scored = []
    for i, r in enumerate(results):
        if r.error is not None or not r.metrics:
            continue
        params = job_of(r.config)["params"]
        train = with_train_overrides(cfg.train, params, "search result")
        best = r.metrics.get("best_val_acc", r.metrics.get("val_acc", 0.0))
        reached = r.metrics.get("epoch", 0)
        scored.append((-reached, -best, i, Candidate(dict(params), train, "search")))
    ranked: list[Candidate] = []
    seen: set[str] = set()
    for *_, c in sorted(scored, key=lambda t: t[:3]):
        if c.id not in seen:
            seen.add(c.id)
            ranked.append(c)
    return ranked


def select_top(cfg: SweepConfig, results: Iterable[Any]) -> list[Candidate]:
    """Search results -> the top `search.top_k_per_backbone` of each backbone, ranked as
    `rank_search` ranks them."""
    top: dict[str, list[Candidate]] = {}
    for c in rank_search(cfg, results):
        chosen = top.setdefault(c.backbone, [])
        if len(chosen) < cfg.search.top_k_per_backbone:
            chosen.append(c)
    return [c for cs in top.values() for c in cs]


def _search_fold_probs(cfg: SweepConfig, pool: list[Candidate], store: PredictionStore
                       ) -> tuple[list[Candidate], np.ndarray, np.ndarray]:
    """The pool's candidates with a `search.fold` prediction in the store, and those predictions
    aligned by image_path: (members, probs (M, N, C) float32, targets (N,) int64).

    A fold whose rows or class count differ from the first one's is left out with a warning
    (a store written under other folds): comparing it row by row would be wrong.
    """
    fold = cfg.search.fold
    members: list[Candidate] = []
    rows: list[np.ndarray] = []
    keys = targets = None
    for c in pool:
        if not store.has_fold(c.id, fold):
            continue  # stopped early by ASHA, or failed: no prediction to choose by
        f = store.read_fold(c.id, fold)
        order = np.argsort(f.val_keys, kind="stable")
        if keys is None:
            keys, targets = f.val_keys[order], f.val_targets[order]
        elif not (np.array_equal(f.val_keys[order], keys)
                  and f.val_probs.shape[1] == rows[0].shape[1]):
            _log.warning("select: candidate %s's fold %d predicts other rows or classes than %s's;"
                         " left out of the ensemble selection", c.id, fold, members[0].id)
            continue
        members.append(c)
        rows.append(f.val_probs[order])
    if not members:
        return [], np.zeros((0, 0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return members, np.stack(rows), np.asarray(targets, dtype=np.int64)


def select_ensemble(cfg: SweepConfig, ranked: list[Candidate], budget: int,
                    store: PredictionStore) -> list[Candidate]:
    """`budget` candidates by greedy ensemble gain on their `search.fold` predictions.

    `ranked` is `rank_search`'s order; when fewer than `budget` of them have a prediction
    (ASHA stopped the rest), the budget is filled in that order.
    """
    members, probs, targets = _search_fold_probs(cfg, ranked, store)
    chosen = [members[j] for j in greedy_members(probs, targets, budget)] if members else []
    _log.info("select: ensemble chose %s from %d finished trial(s)",
              ", ".join(c.id for c in chosen) or "none", len(members))
    ids = {c.id for c in chosen}
    return chosen + [c for c in ranked if c.id not in ids][: budget - len(chosen)]


def select_candidates(cfg: SweepConfig, results: Iterable[Any],
                      store: PredictionStore) -> list[Candidate]:
    """The search's configs for cv, by `search.select` (see its description)."""
    results = list(results)
    top = select_top(cfg, results)
    if cfg.search.select == "top_k":
        return top
    return select_ensemble(cfg, rank_search(cfg, results), cfg.search.budget or len(top), store)


# ---------------------------------------------------------------- cv stage


def cv_candidates(cfg: SweepConfig, searched: list[Candidate] | None,
                  fixed: list[Candidate]) -> list[Candidate]:
    """The search's choices, then the fixed candidates not among them; the base config alone
    when no search ran (`searched` is None) and there is no fixed candidate."""
    chosen = list(searched or [])
    if searched is None and not fixed:
        chosen = [Candidate({}, cfg.train, "base")]
    seen = {c.id for c in chosen}
    return chosen + [c for c in fixed if c.id not in seen and not seen.add(c.id)]


def pseudo_candidates(cfg: SweepConfig, store: PredictionStore) -> tuple[list[Candidate], str]:
    """Stage pseudo's candidates: the `pseudo.top` heaviest configs of ensemble.json's
    `fold_weights` (views and EMA sets of one training count once), each with the test images
    its fold models label (`train.pseudo`). None, and one line why, when there is no
    ensemble.json yet or its ensemble already weighs a pseudo candidate (the round is done)."""
    path = ensemble_json(cfg)
    if not fs.is_file(path):
        return [], (f"stage pseudo: no {path} yet; run python -m ensemble_search.optimize, "
                    "then the sweep again")
    fw = read_fold_weights(path)
    spec = {"source": fw.digest, **cfg.pseudo.model_dump(include={"threshold", "labels",
                                                                 "max_share"})}
    manifests = {c: store.read_manifest(c, min(fw.folds)) for c in fw.ranked()}
    if any((m.get("config") or {}).get("pseudo") for m in manifests.values()):
        return [], f"stage pseudo: {path} already weighs pseudo candidates: the round is done"
    out: dict[str, Candidate] = {}
    for cid, m in manifests.items():
        base = m.get("base_candidate") or cid
        if base not in out and len(out) < cfg.pseudo.top:
            params = {**m["config"], "pseudo": spec}
            out[base] = Candidate(params, with_train_overrides(
                cfg.train, params, f"{path}: candidate {cid}"), "pseudo")
    return list(out.values()), ""


def plan_cv_jobs(cfg: SweepConfig, candidates: list[Candidate],
                 store: PredictionStore) -> list[Job]:
    """(candidate, fold) pairs not yet in the store, in candidate then fold order. A pair is in
    the store when every prediction set its training stores is (`PredictionStore.trained`):
    a view added to the config trains the fold again."""
    return [
        Job(params=c.params, fold=k)
        for c in candidates
        for k in range(cfg.data.n_folds)
        if not store.trained(c.train, k)
    ]


def config_digest(cfg: SweepConfig) -> str:
    """A short hash of everything that changes what a stage's trials do.

    The stages' Ray experiments and the sweep's MLflow run are named by it: the same command
    after a kill finds (and resumes) them, a fixed config starts new ones instead of resuming
    trials that would fail again. Display, ensemble and pseudo settings, and where the sweep
    lives, stay out of it; the base training config enters by its candidate id, so a key added
    to it later (at its default) renames no experiment.
    """
    d = cfg.model_dump(mode="json", exclude={"name": True, "storage_path": True, "train": True,
                                             "tracking_uri": True, "ensemble": True,
                                             "pseudo": True, "ray": {"verbose"}})
    d["train"] = candidate_id(cfg.train)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def search_experiment_name(cfg: SweepConfig) -> str:
    """The search stage's experiment, named after the config (see `config_digest`)."""
    return f"search-{config_digest(cfg)}"


def cv_experiment_name(candidates: list[Candidate], cfg: SweepConfig | None = None,
                       stage: str = "cv") -> str:
    """Named after the candidate set (and the config, see `config_digest`), so re-running the
    same sweep finds (and restores) the same experiment, while adding a backbone or fixing the
    config starts a new one for what is new."""
    ids = sorted(c.id for c in candidates)
    key = json.dumps(ids if cfg is None else [ids, config_digest(cfg)])
    return f"{stage}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
