"""The ensemble search's config (`EnsembleConfig`): the `ensemble:` section of a sweep config.

The sweep never reads this section; `optimize` validates it here, so that sketchtune's config
needs nothing of ensemble_search (whose method registry decides the allowed `method` names).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from sketchtune.config import SweepConfig, validate
from sketchtune.config.fields import SEED, Bool, Float, Int, Strict
from sketchtune.errors import ConfigError

from .methods import METHODS

__all__ = ["EnsembleConfig", "ensemble_config"]


def _ensemble_method(name: str) -> str:
    """`auto` or a method of the ensemble registry (`ensemble_search.methods.METHODS`)."""
    if name == "auto":
        return name
    if name not in METHODS:
        raise ValueError(f"unknown ensemble method {name!r}; choose from "
                         f"{', '.join(['auto', *METHODS])}")
    return name


def _metric_name(value: Any) -> Any:
    # `accuracy` is the older spelling; `acc` is the suffix of the metric names (honest_acc).
    return "acc" if value == "accuracy" else value


class EnsembleConfig(Strict):
    """The ensemble search (`python -m ensemble_search.optimize`): weights from OOF predictions."""

    method: Annotated[str, AfterValidator(_ensemble_method)] = Field(
        "auto",
        description="How candidates are weighted: `auto` or a method of the registry "
        "(`python -m ensemble_search.optimize --help` lists them). `auto` fits every method and "
        "keeps the one with the best honest estimate (weights fitted on k-1 folds, scored on the "
        "held-out one) on `metric`, so the choice is not made on the rows that fitted it.",
    )
    metric: Annotated[Literal["log_loss", "acc"], BeforeValidator(_metric_name)] = Field(
        "acc",
        description="What greedy selection, `optimized` (a smooth surrogate of accuracy from "
        "its log-loss weights), pruning's ranking and the best single candidate optimise, and "
        "what `auto` compares. acc (accuracy; the older spelling `accuracy` is accepted): the "
        "competition's metric and both shipped configs'. log_loss rewards calibrated "
        "probabilities and separates candidates that accuracy ties.",
    )
    greedy_iterations: Int = Field(
        25, ge=1,
        description="Picks (with replacement) of greedy selection; the weights are the pick "
        "counts. 25: AutoGluon's default ensemble size.",
    )
    greedy_sorted_init: Int = Field(
        0, ge=0,
        description="Start greedy selection from this many best single candidates (Caruana et "
        "al. 2004's sorted initialisation). 0: start empty.",
    )
    greedy_bagging: Int = Field(
        0, ge=0,
        description="If above 0, run greedy selection on this many random halves of the "
        "candidates and average the weights. 0: off; a sweep has few candidates, and a half "
        "of few is fewer.",
    )
    temperature: Bool = Field(
        False,
        description="Also fit one temperature on `optimized`'s average, after its weights (only "
        "`optimized` has it). It changes log loss only, never accuracy: it never changes a row's "
        "predicted class. It comes after the weights because the candidates are already "
        "calibrated one by one before them (a temperature each, always on); this one only "
        "undoes the flattening that averaging causes. Off: accuracy is the metric.",
    )
    prune_threshold: Float = Field(
        0.7, gt=-1.0, le=1.0,
        description="`pruned` drops a candidate whose errors correlate (phi of the 'wrong on "
        "this image' indicators) above this with a better one's. Errors, not probabilities: "
        "every decent model puts its mass on the true class, so probability correlations sit "
        "near 0.9 for models that still err differently. 0.7: chosen by measurement "
        "(benchmarks/RESULTS-ensemble.md); it drops models whose mistakes mostly repeat a "
        "better one's.",
    )
    prune_then: Literal["mean", "greedy"] = Field(
        "mean",
        description="What `pruned` does with the survivors: average them, or select greedily. "
        "mean: pruning is there to make a plain average work.",
    )
    seed: Int = Field(42, **SEED, description="Seeds greedy bagging's random halves. 42: the "
                      "project's seed everywhere.")


def ensemble_config(cfg: SweepConfig, source: str) -> EnsembleConfig:
    """The `ensemble:` section of `cfg` validated, and `pseudo.method` (whose per-fold weights
    optimize writes for the pseudo stage) a method of the registry; a ConfigError naming
    `source` and the key otherwise."""
    if cfg.pseudo.method not in METHODS:
        raise ConfigError(f"{source}: pseudo.method: unknown ensemble method "
                          f"{cfg.pseudo.method!r}; choose from {', '.join(METHODS)}")
    return validate(EnsembleConfig, cfg.ensemble, source, ("ensemble",))
