"""The ensemble-method interface and its registry: `EnsembleMethod.fit(probs, targets) -> self`.

Every method averages class probabilities with non-negative weights that sum to 1
(`weights_`, shape (M,)). A method may first calibrate each candidate (`temperatures_`,
(M,), None = none) and may end with one temperature on the average (`temperature_`, 1.0 =
none); that last one changes log loss only, never a predicted class. `fit_view(OOFView)` is
the same fit on some rows and candidates without copying them (the nested estimate's k-1
folds); `fit` is `fit_view` on every row.

A subclass that sets `name` registers itself in `METHODS` (Optuna's samplers, timm's
`register_model`): it says how it is built from the `ensemble` config section
(`from_config`) and whether `method: auto` considers it (`in_auto`). The config's allowed
`ensemble.method` values, `auto`, the reported methods and `--help` all read `METHODS`, so a
new method is one class. The shipped methods are in `ensemble_search.methods`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from .metrics import EPS, calibrate, weighted_probs
from .oofview import OOFView

if TYPE_CHECKING:  # the config is only read, never built, here
    from ensemble_search.config import EnsembleConfig

__all__ = ["METHODS", "EnsembleMethod", "Metric", "apply_temperature", "check_metric",
           "fit_temperature", "fit_view"]

# The quantities a method can optimise, named as the suffix of the metric names
# (`val_acc`, `honest_acc`, `oof_log_loss`).
Metric = Literal["log_loss", "acc"]

# name -> class, in registration order (the tie-break order of `auto`: simpler first).
METHODS: dict[str, type[EnsembleMethod]] = {}


def check_metric(metric: str) -> None:
    if metric not in ("log_loss", "acc"):
        raise ValueError(f"metric must be 'log_loss' or 'acc' but got {metric!r}.")


def _register(cls: type[EnsembleMethod]) -> None:
    name = cls.name
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"{cls.__qualname__}.name must be a non-empty string other than "
                         f"'auto' but got {name!r}.")
    old = METHODS.get(name)
    # The same class defined again (a re-run notebook cell, a reloaded module) replaces itself.
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__,
                                                                 cls.__qualname__):
        raise ValueError(f"ensemble method {name!r} is already registered by "
                         f"{old.__module__}.{old.__qualname__}.")
    METHODS[name] = cls


class EnsembleMethod(ABC):
    """Probability averaging with learned weights. Subclasses set `weights_` in `fit_view`.

    A subclass that defines `name` is registered under it; one that inherits its parent's
    name (a test spy, a variant) is not.
    """

    name: ClassVar[str]
    # Whether `method: auto` may choose it. The reported-only methods (the best single
    # candidate) are fitted and scored like the others, as a reference.
    in_auto: ClassVar[bool] = True
    # A fit's rough cost next to the plain mean's, for scheduling only: compare_methods and
    # the nested estimate start the costliest fits first, so that no thread is left with one
    # long fit at the end while the others idle. Results never depend on it.
    cost: ClassVar[float] = 1.0
    weights_: np.ndarray
    temperatures_: np.ndarray | None = None  # (M,) per-candidate calibration, None: none
    temperature_: float = 1.0

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _register(cls)

    @classmethod
    def from_config(cls, cfg: EnsembleConfig) -> EnsembleMethod:
        """The method with its settings from the sweep's `ensemble` section."""
        return cls()

    def fit(self, probs: np.ndarray, targets: np.ndarray) -> EnsembleMethod:
        """probs: (M, N, C) float32 candidates' probabilities; targets: (N,) int."""
        return self.fit_view(OOFView(probs, targets))

    @abstractmethod
    def fit_view(self, data: OOFView) -> EnsembleMethod:
        """Fit on the view's rows and candidates without copying them."""

    def predict_proba(self, probs: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """probs: (M, N, C) -> (N, C) float64 (or (len(rows), C) for the given rows)."""
        out = weighted_probs(probs, self.weights_, rows, self.temperatures_)
        return apply_temperature(out, self.temperature_)

    def score_view(self, data: OOFView) -> tuple[np.ndarray, np.ndarray]:
        """(n,) float64 p(true class) and (n,) bool argmax == target on the view's rows.

        Exactly what `predict_proba` gives; without a temperature it is read from the view's
        per-row facts instead of summing (n, C) probabilities.
        """
        assert data.cands is None, "scores need every candidate"
        if (self.temperature_ == 1.0 and self.temperatures_ is None
                and type(self).predict_proba is EnsembleMethod.predict_proba):
            return data.scores(self.weights_)
        pred = self.predict_proba(data.probs, data.rows)
        return pred[np.arange(data.n), data.targets], pred.argmax(axis=1) == data.targets

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.endswith("_"))
        return f"{type(self).__name__}({args})"



def fit_view(method: EnsembleMethod, data: OOFView) -> EnsembleMethod:
    """Fit `method` on a view. A subclass that overrides `fit` gets the rows copied, as its
    `fit(probs, targets)` expects; the methods here read the view in place."""
    if type(method).fit is not EnsembleMethod.fit:
        return method.fit(data.take(), data.targets)
    return method.fit_view(data)


def fit_temperature(probs: np.ndarray, targets: np.ndarray) -> float:
    """probs: (N, C) ensemble probabilities -> T minimising the log loss of softmax(log p / T).

    Searched on log T in [1/20, 20]; returns 1.0 unless another T is strictly better.
    """
    logp = np.log(np.clip(probs, EPS, None))
    ar = np.arange(len(targets))

    def loss(log_t: float) -> float:
        z = logp / np.exp(log_t)
        return float((logsumexp(z, axis=1) - z[ar, targets]).mean())

    res = minimize_scalar(loss, bounds=(-np.log(20.0), np.log(20.0)), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x)) if res.fun < loss(0.0) else 1.0


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """probs: (N, C) -> softmax(log(probs) / T), (N, C) float64; T = 1 returns probs."""
    return calibrate(probs, temperature)

