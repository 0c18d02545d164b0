"""The shipped ensemble methods (`mean`, `greedy`, `optimized`, `pruned`, `best_single`), each
one `EnsembleMethod` (`ensemble_search.base`) that registers itself in `METHODS` in this
order, the tie-break order of `auto`; and the registry's queries.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp
from threadpoolctl import threadpool_limits

from .base import (
    METHODS,
    EnsembleMethod,
    Metric,
    apply_temperature,
    check_metric,
    fit_temperature,
    fit_view,
)
from .calibration import calibrated_log_true, candidate_temperatures
from .correlation import error_correlation
from .greedy import greedy_log_loss, select_accuracy, selection_weights, single_scores
from .metrics import EPS, log_loss_from_true
from .oofview import OOFView

if TYPE_CHECKING:  # the config is only read, never built, here
    from ensemble_search.config import EnsembleConfig

__all__ = [
    "METHODS",
    "BestSingle",
    "EnsembleMethod",
    "GreedyEnsemble",
    "MeanEnsemble",
    "OptimizedEnsemble",
    "PrunedEnsemble",
    "apply_temperature",
    "auto_methods",
    "build_method",
    "by_cost",
    "fit_temperature",
    "fit_view",
    "reported_methods",
]

_log = logging.getLogger(__name__)


class MeanEnsemble(EnsembleMethod):
    """The plain average of every candidate: the baseline every method is compared with."""

    name = "mean"

    def fit_view(self, data: OOFView) -> MeanEnsemble:
        self.weights_ = np.full(data.m, 1.0 / data.m)
        return self


class GreedyEnsemble(EnsembleMethod):
    """Forward selection with replacement (Caruana et al. 2004); weights = pick counts.

    sorted_init: start from this many best single candidates; bagging: if > 0, run the
    selection on this many random halves of the candidates and average their weights.
    """

    name = "greedy"
    cost = 8.0  # 25 rounds over every candidate: ~0.3 s per fold at 40 x 12,000 x 500

    def __init__(
        self, iterations: int = 25, metric: Metric = "log_loss", sorted_init: int = 0,
        bagging: int = 0, seed: int = 42,
    ) -> None:
        if iterations < 1:
            raise ValueError(f"iterations must be at least 1 but got {iterations}.")
        if sorted_init < 0 or bagging < 0:
            raise ValueError(f"sorted_init and bagging cannot be negative but got "
                             f"{sorted_init} and {bagging}.")
        check_metric(metric)
        self.iterations, self.metric = iterations, metric
        self.sorted_init, self.bagging, self.seed = sorted_init, bagging, seed

    @classmethod
    def from_config(cls, cfg: EnsembleConfig) -> GreedyEnsemble:
        return cls(cfg.greedy_iterations, cfg.metric, cfg.greedy_sorted_init,
                   cfg.greedy_bagging, cfg.seed)

    def _select(self, data: OOFView, q: np.ndarray | None) -> list[int]:
        if self.metric == "log_loss":
            return greedy_log_loss(q, self.iterations, self.sorted_init)
        return select_accuracy(data, self.iterations, self.sorted_init)

    def fit_view(self, data: OOFView) -> GreedyEnsemble:
        m = data.m
        q = data.q if self.metric == "log_loss" else None
        if not self.bagging or m < 2:
            self.selection_ = self._select(data, q)
            self.weights_ = selection_weights(self.selection_, m)
            return self
        rng = np.random.default_rng(self.seed)
        size = max(1, m // 2)
        weights = np.zeros(m)
        self.selection_ = []
        for _ in range(self.bagging):
            bag = np.sort(rng.choice(m, size=size, replace=False))
            sub_q = None if q is None else q[:, bag]
            sel = [int(bag[i]) for i in self._select(data.select(bag), sub_q)]
            self.selection_.append(sel)
            weights += selection_weights(sel, m)
        self.weights_ = weights / self.bagging
        return self


class OptimizedEnsemble(EnsembleMethod):
    """Weights fitted by scipy on calibrated candidates, for the configured metric.

    1. calibrate: a temperature per candidate (`temperatures_`), fitted on the fitting rows
       (`calibration.candidate_temperatures`). Focal-loss models are under-confident; without
       this a log-loss fit trusts sharp weak models over flat strong ones.
    2. log loss of the weighted average of the calibrated candidates, minimised over the
       simplex (SLSQP from the mean; convex, so the optimum is global).
    3. metric "acc": a smooth surrogate of accuracy, the mean sigmoid of the margin between
       the true class and a soft maximum of the strongest wrong classes (each row's best wrong
       class of the heaviest candidates), optimised from the log-loss weights.
    Among the plain mean, the log-loss weights and (acc) the surrogate's weights, the one
    that scores best on the fitting rows by `metric` is kept (ties: the simpler, in that
    order; for acc a more complex one must win by more than one standard error of the paired
    difference), so `optimized` is the mean unless something clearly beats it where fitted.

    temperature: then one temperature on the average (`temperature_`). It changes log loss
    only, never a predicted class (it is monotone per row), and only this method has it. It
    comes last and the weights are not refitted through it: the candidates are already
    calibrated, so it only corrects the flattening that averaging itself causes, and a loss
    through a temperature of the average is no longer convex in the weights.
    """

    name = "optimized"
    cost = 15.0  # calibration, two SLSQP fits and exact scoring: ~0.7 s per fold there

    def __init__(self, temperature: bool = False, metric: Metric = "log_loss",
                 calibrate: bool = True, tol: float = 1e-10) -> None:
        check_metric(metric)
        self.temperature, self.metric, self.calibrate, self.tol = (temperature, metric,
                                                                   calibrate, tol)

    @classmethod
    def from_config(cls, cfg: EnsembleConfig) -> OptimizedEnsemble:
        return cls(temperature=cfg.temperature, metric=cfg.metric)

    def fit_view(self, data: OOFView) -> OptimizedEnsemble:
        m = data.m
        mean = np.full(m, 1.0 / m)
        temps = candidate_temperatures(data) if self.calibrate and m > 1 else np.ones(m)
        log_q = calibrated_log_true(data, temps) if self.calibrate and m > 1 else \
            np.log(np.clip(data.q, EPS, None))
        q = np.exp(log_q)  # (n, m) calibrated p(true class)
        options = [("mean", mean, None), ("log_loss", _min_log_loss(q, self.tol), temps)]
        if self.metric == "acc" and m > 1:
            comp = _Competitors(data, temps, options[1][1], log_q)
            options.append(("soft_acc", comp.soft_accuracy_weights(options[1][1]), temps))
            right = [comp.right(w, t) for _, w, t in options]
            best = 0
            for i in range(1, len(options)):
                # Leave the simpler weighting only for a gain beyond noise on the fitting rows
                # (McNemar, one standard error): on a few hundred rows a lucky handful of images
                # is not a better ensemble.
                gain = int((right[i] & ~right[best]).sum())
                loss = int((right[best] & ~right[i]).sum())
                if gain - loss > np.sqrt(gain + loss):
                    best = i
            scores = [0.0 if i == best else 1.0 for i in range(len(options))]
        else:
            # The mean's log loss is exact (T = 1: the summary is exact); the calibrated
            # candidates' is approximated in the tail, as their fit was.
            scores = [log_loss_from_true(data.q @ mean), log_loss_from_true(q @ options[1][1])]
        name, w, t = options[int(np.argmin(scores))]  # first minimum: the simpler on ties
        self.objective_, self.weights_ = name, w
        self.temperatures_ = None if t is None or np.all(t == 1.0) else t
        self.temperature_ = 1.0
        if self.temperature:
            self.temperature_ = fit_temperature(data.weighted(w, self.temperatures_),
                                                data.targets)
        return self


def _min_log_loss(q: np.ndarray, tol: float) -> np.ndarray:
    """q: (n, m) p(true class) -> (m,) simplex weights minimising the average's log loss."""
    m = q.shape[1]
    w0 = np.full(m, 1.0 / m)
    if m == 1:
        return w0

    def loss_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = np.clip(q @ w, EPS, None)
        return float(-np.log(s).mean()), -(q / s[:, None]).mean(axis=0)

    w = _simplex_minimize(loss_grad, w0, tol)
    return w if log_loss_from_true(q @ w) <= log_loss_from_true(q @ w0) else w0


def _simplex_minimize(fun, w0: np.ndarray, tol: float, maxiter: int = 1000) -> np.ndarray:
    """SLSQP over non-negative weights summing to 1; solver dust (< 1e-8) set to 0."""
    m = len(w0)
    # One BLAS thread: SLSQP's small products gain nothing from more, and scipy's own
    # OpenBLAS threads left spinning afterwards slow numpy's next product ~10x.
    with threadpool_limits(1, user_api="blas"):
        res = minimize(
            fun, w0, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * m,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0,
                          "jac": lambda w: np.ones_like(w)}],
            options={"maxiter": maxiter, "ftol": tol},
        )
    w = np.clip(res.x, 0.0, None)
    w[w < 1e-8] = 0.0  # solver dust, not a weight anyone meant
    return w / w.sum() if w.sum() > 0 else w0


# Wrong classes per row that the accuracy surrogate competes against, and rows it fits on.
_COMPETITORS = 6
_SURROGATE_ROWS = 4096


class _Competitors:
    """Each fitting row's true class and its strongest wrong classes, for every candidate.

    The wrong classes are the best wrong class of the `_COMPETITORS` heaviest candidates of
    the log-loss weights (the ones an average's runner-up comes from). Accuracy on them is an
    upper bound of the real one; it only chooses between weightings and seeds the surrogate.
    """

    def __init__(self, data: OOFView, temps: np.ndarray, w_start: np.ndarray,
                 log_q: np.ndarray) -> None:
        """log_q: (n, m) calibrated log p(true class) at `temps` (`calibrated_log_true`)."""
        m, n = data.m, data.n
        rows = np.arange(n) if data.rows is None else data.rows
        cands = np.arange(m) if data.cands is None else data.cands
        heavy = np.argsort(-w_start, kind="stable")[: min(_COMPETITORS, m)]
        flat = rows[:, None] * data.probs.shape[2] + data.c_other[heavy].T  # (n, L) classes
        raw = np.empty((m, n, flat.shape[1]), dtype=data.probs.dtype)
        for j in range(m):  # one candidate at a time, rows in order: 2x a 3-d fancy index
            np.take(data.probs[cands[j]].reshape(-1), flat, out=raw[j])
        self.raw = np.moveaxis(raw, 0, -1).astype(np.float64)  # (n, L, m) at T = 1
        self.raw_true = data.q  # (n, m)
        s = 1.0 / temps
        lz = s * np.log(np.clip(data.q, EPS, None)) - log_q  # (n, m) log normaliser
        self.cal = np.exp(s * np.log(np.clip(self.raw, EPS, None)) - lz[:, None, :])
        self.cal_true = np.exp(log_q)

    def _arrays(self, temps: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return (self.raw_true, self.raw) if temps is None else (self.cal_true, self.cal)

    def right(self, w: np.ndarray, temps: np.ndarray | None) -> np.ndarray:
        """(n,) bool: the true class beats every listed wrong class under weights w."""
        true, wrong = self._arrays(temps)
        return true @ w > (wrong @ w).max(axis=1)

    def soft_accuracy_weights(self, w0: np.ndarray) -> np.ndarray:
        """Simplex weights maximising mean sigmoid(margin / tau) from w0, on calibrated rows."""
        true, wrong = self.cal_true, self.cal
        step = max(1, len(true) // _SURROGATE_ROWS)  # a spread subset: the cost is per row
        true, wrong = true[::step], wrong[::step]
        margin0 = true @ w0 - (wrong @ w0).max(axis=1)
        # tau: a quarter of the typical margin, so the sigmoid is sharp where rows are decided
        # and still has slope for the rows near the boundary.
        tau = max(0.25 * float(np.median(np.abs(margin0))), 1e-4)

        def loss_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
            e = wrong @ w / tau  # (n, L)
            soft = logsumexp(e, axis=1)
            a = np.exp(e - soft[:, None])  # (n, L)
            margin = true @ w / tau - soft
            sig = 0.5 * (1.0 + np.tanh(0.5 * margin))
            dm = (true - np.einsum("nl,nlm->nm", a, wrong)) / tau  # (n, m)
            return -float(sig.mean()), -((sig * (1.0 - sig))[:, None] * dm).mean(axis=0)

        return _simplex_minimize(loss_grad, w0, 1e-9, maxiter=100)


class PrunedEnsemble(EnsembleMethod):
    """Drop candidates whose errors correlate above `threshold` with a better one's.

    Candidates are visited best first (by `metric` on the fitting rows); one is kept if the
    phi correlation of its error indicators with every kept candidate's is at most
    `threshold` (`correlation.error_correlation`: two models that err on the same images add
    nothing to each other). The kept ones are then averaged (`then="mean"`) or selected
    greedily (`then="greedy"`).
    """

    name = "pruned"

    def __init__(
        self, threshold: float = 0.7, metric: Metric = "log_loss",
        then: Literal["mean", "greedy"] = "mean", iterations: int = 25,
    ) -> None:
        if not -1.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (-1, 1] but got {threshold}.")
        if then not in ("mean", "greedy"):
            raise ValueError(f"then must be 'mean' or 'greedy' but got {then!r}.")
        check_metric(metric)
        self.threshold, self.metric = threshold, metric
        self.then, self.iterations = then, iterations

    @classmethod
    def from_config(cls, cfg: EnsembleConfig) -> PrunedEnsemble:
        return cls(cfg.prune_threshold, cfg.metric, cfg.prune_then, cfg.greedy_iterations)

    def fit_view(self, data: OOFView) -> PrunedEnsemble:
        m = data.m
        order = np.argsort(_single_losses(data, self.metric), kind="stable")
        corr = error_correlation(data.correct)
        kept: list[int] = []
        for j in order:
            if all(corr[j, k] <= self.threshold for k in kept):
                kept.append(int(j))
        self.kept_ = np.asarray(sorted(kept), dtype=np.int64)
        self.weights_ = np.zeros(m)
        if self.then == "mean":
            self.weights_[self.kept_] = 1.0 / len(self.kept_)
        else:
            sub = GreedyEnsemble(self.iterations, self.metric).fit_view(data.select(self.kept_))
            self.weights_[self.kept_] = sub.weights_
        return self


class BestSingle(EnsembleMethod):
    """All weight on the candidate that scores best on the fitting rows (ties: lowest index).

    Not an ensemble: the reference every ensemble must beat, reported beside them.
    """

    name = "best_single"
    in_auto = False

    def __init__(self, metric: Metric = "log_loss") -> None:
        check_metric(metric)
        self.metric = metric

    @classmethod
    def from_config(cls, cfg: EnsembleConfig) -> BestSingle:
        return cls(cfg.metric)

    def fit_view(self, data: OOFView) -> BestSingle:
        losses = _single_losses(data, self.metric)
        self.weights_ = np.zeros(data.m)
        self.weights_[int(np.argmin(losses))] = 1.0
        return self


def _single_losses(data: OOFView, metric: Metric) -> np.ndarray:
    """(m,) per-candidate loss on the view's rows; lower is better."""
    if metric == "log_loss":
        return single_scores(data.q, None)
    return single_scores(None, data.correct)



def auto_methods() -> list[str]:
    """The methods `auto` chooses among, in tie-break order (registration: simpler first)."""
    return [name for name, cls in METHODS.items() if cls.in_auto]


def by_cost(names: list[str]) -> list[str]:
    """`names` with the costliest registered methods first (`EnsembleMethod.cost`; an
    unregistered name counts as 1): the order in which to start their fits on threads."""
    return sorted(names, key=lambda n: -getattr(METHODS.get(n), "cost", 1.0))


def reported_methods() -> list[str]:
    """Every registered method: `auto`'s choices first, then the reported-only ones."""
    return auto_methods() + [name for name, cls in METHODS.items() if not cls.in_auto]


def build_method(cfg: EnsembleConfig, name: str | None = None) -> EnsembleMethod:
    """The method `name` (default `cfg.method`; not "auto") with its settings from `cfg`."""
    name = name or cfg.method
    if name not in METHODS:
        raise ValueError(f"unknown ensemble method {name!r}; choose from {sorted(METHODS)}.")
    return METHODS[name].from_config(cfg)
