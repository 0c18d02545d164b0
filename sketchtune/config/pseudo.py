"""Stage pseudo (`PseudoConfig`): one round of fold-safe pseudo-labelling of the test images."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .fields import Bool, Float, Int, StorageLocation, Strict

__all__ = ["PseudoConfig", "PseudoLabels"]


class PseudoLabels(Strict):
    """A pseudo-round candidate's extra training images (`train.pseudo`): set by stage pseudo
    from `PseudoConfig` and the ensemble.json it read, not by hand. Part of the candidate id."""

    source: str = Field(
        pattern=r"^[0-9a-f]{16}$",
        description="sha256 (first 16 hex) of the ensemble.json section (`fold_weights`) whose "
        "per-fold weights labelled the test images.")
    threshold: Float = Field(ge=0.0, lt=1.0, description="As `pseudo.threshold`.")
    labels: Literal["hard", "soft"] = Field(description="As `pseudo.labels`.")
    max_share: Float = Field(gt=0.0, lt=1.0, description="As `pseudo.max_share`.")


class PseudoConfig(Strict):
    """After cv, retrain the best candidates with test images labelled by the ensemble.

    Fold-safe: fold k's model trains on test images labelled only by fold k's own models
    (which never saw fold k's validation rows), weighted as the ensemble method `method`
    weighted them when it was fitted without fold k's rows (optimize's nested estimate, in
    ensemble.json). So fold k's out-of-fold score, the honest estimate and `auto` stay honest.
    """

    enabled: Bool = Field(
        False,
        description="Run stage pseudo after cv. Off: it needs an ensemble.json first (run "
        "`python -m ensemble_search.optimize`, then the sweep again with this on), and it "
        "trains `top` more candidates on every fold.",
    )
    ensemble: StorageLocation | None = Field(
        None,
        description="The ensemble.json whose per-fold weights label the test images. null: "
        "`<sweep folder>/ensemble/ensemble.json`, optimize's default output.",
    )
    method: str = Field(
        "greedy",
        description="The ensemble method whose nested (fold-held-out) weights label the test "
        "images; ensemble.json holds them for this method. Not `auto`: the choice among "
        "methods sees every fold's labels. greedy: the usual competition ensemble.",
    )
    top: Int = Field(
        2, ge=1,
        description="How many candidates get a pseudo round: the `method`'s highest-weighted "
        "ones. 2: on the demo, a round of 2 candidates x 5 folds adds about half of the "
        "sweep's trials.",
    )
    threshold: Float = Field(
        0.9, ge=0.0, lt=1.0,
        description="A test image is pseudo-labelled only where the fold's calibrated ensemble "
        "gives its top class at least this probability. 0.9: confident images only, the usual "
        "choice; a wrong pseudo-label teaches the mistake.",
    )
    labels: Literal["hard", "soft"] = Field(
        "hard",
        description="hard: the top class; soft: the calibrated probabilities (the loss takes "
        "soft targets). hard: the standard round.",
    )
    max_share: Float = Field(
        0.5, gt=0.0, lt=1.0,
        description="At most this share of the images of each epoch (and so of a batch, on "
        "average) are pseudo-labelled; above it a random subset is drawn per epoch. 0.5: the "
        "labelled images keep at least half of every epoch.",
    )
