"""Stage search (`SearchConfig`): the space, Optuna's samples, ASHA, the cv selection rule; and
the check that each dimension's draws fit the training field it sets."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field, model_validator

from .fields import Bool, Float, Int, Strict
from .train import TrainConfig

__all__ = ["ParamSpec", "SearchConfig", "dimension_problem"]


class ParamSpec(Strict):
    """One dimension of the search space, addressed by a dotted key into TrainConfig.

    Every value a dimension can take at its ends (and every choice) is validated against
    TrainConfig before Ray starts.
    """

    type: Literal["uniform", "loguniform", "int", "choice"] = Field(
        description="`uniform`: a float in [low, high]; `loguniform`: the same on a log scale "
        "(for scales such as `optim.lr`); `int`: an integer in [low, high], both ends "
        "included; `choice`: one of `values`. Required: there is no sensible default.",
    )
    low: Float | None = Field(None, description="Lower end, for every type but `choice`.")
    high: Float | None = Field(None, description="Upper end (above `low`), for every type but "
                               "`choice`.")
    values: list[Any] | None = Field(None, description="The values of a `choice` (e.g. "
                                     "backbones for `model.name`).")

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a 'choice' needs a non-empty 'values' list")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"a '{self.type}' needs 'low' and 'high'")
            if self.low >= self.high:
                raise ValueError(f"low must be below high but got low={self.low}, high={self.high}")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError(f"loguniform low must be positive but got {self.low}")
        return self


class SearchConfig(Strict):
    """Stage *search*: Optuna (TPE) samples `space` on one fold; ASHA stops weak trials early.

    The top configs of each backbone then go to stage *cv*, which trains them on every fold.
    """

    enabled: Bool = Field(
        True,
        description="Run the search stage. Off (or an empty `space`): only the fixed "
        "`candidates`, or the `train` config itself when there are none, go to cv.",
    )
    num_samples: Int = Field(
        4, ge=1,
        description="Configs Optuna samples. 4: the demo on a CPU; real searches use tens "
        "(configs/imagenet_sketch.yaml: 24).",
    )
    fold: Int = Field(
        0, ge=0,
        description="The fold the search trains on (below data.n_folds). A search trial that "
        "ran to its last epoch is already that fold of its candidate, so cv does not train it "
        "again. 0: any fold would do.",
    )
    metric: Literal["val_acc", "val_loss"] = Field(
        "val_acc",
        description="What Optuna optimises and ASHA compares (maximised for val_acc, minimised "
        "for val_loss). val_acc: the competition's metric. The top-k ranking uses the best "
        "val_acc either way.",
    )
    space: dict[str, ParamSpec] = Field(
        {},
        description="Dimensions by dotted key into `train` (`optim.lr`, `model.name`, "
        "`aug.strength`). Empty: no search.",
    )
    asha: Bool = Field(
        True,
        description="Stop weak trials early with ASHA. On: with tens of epochs it saves most "
        "of a search's work. A rung compares val_acc mid-training, so a backbone that starts "
        "slowly is stopped before it overtakes: on the 4-epoch demo (configs/sweep.yaml turns it "
        "off) grace 1-2 lost the best config on 1-2 of 3 seeds, and grace 3, which kept it on "
        "all 3, saved only 11-14% of the epochs (benchmarks/RESULTS-sweep.md).",
    )
    grace_period: Int = Field(
        1, ge=1,
        description="Epochs every trial runs before ASHA may stop it; at each rung after it, "
        "a trial goes on only if it is in the top 1/reduction_factor. 1: Ray's default, the "
        "least work; set "
        "it past `train.sched.warmup_epochs` when backbones warm up at different speeds (the "
        "sweep warns otherwise; benchmarks/RESULTS-sweep.md).",
    )
    reduction_factor: Float = Field(
        2.0, gt=1.0,
        description="ASHA keeps the top 1/reduction_factor of the trials at each rung. 2, not "
        "Ray's 4: with a handful of samples, keeping a quarter would leave one trial.",
    )
    top_k_per_backbone: Int = Field(
        1, ge=1,
        description="How many of each backbone's best search configs go to cv (trials that "
        "ran further rank first, then by best val_acc). 1: cv costs one config x n_folds per "
        "backbone, and an ensemble gains most from different backbones.",
    )
    select: Literal["top_k", "ensemble"] = Field(
        "top_k",
        description="How the search's configs for cv are chosen. top_k: the "
        "`top_k_per_backbone` best of each backbone by fold-`fold` val_acc. ensemble: greedy "
        "forward selection (Caruana, with replacement) on the `fold` validation predictions of "
        "every trial that ran to its last epoch, by accuracy with log loss breaking ties, until "
        "`budget` distinct configs are chosen (hyper-deep ensembles, Wenzel et al. 2020); the "
        "top_k ranking fills the budget when fewer trials finished. top_k: over 3 demo seeds "
        "`ensemble` did not win (submission accuracy 0.7560 vs 0.7587, "
        "benchmarks/RESULTS-selection.md): its gains on one fold's predictions are a handful "
        "of images; it can only differ when more trials finish than the budget.",
    )
    budget: Int | None = Field(
        None, ge=1,
        description="How many configs `select: ensemble` sends to cv. None: as many as top_k "
        "would pick (`top_k_per_backbone` x the backbones the search tried), so both rules "
        "cost the same cv trials.",
    )


def _field_type(dotted: str) -> Any:
    """The annotation of TrainConfig's field at a dotted key, or None when there is none."""
    model: Any = TrainConfig
    ann: Any = None
    for part in dotted.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) \
                or part not in model.model_fields:
            return None  # an unknown key: the probe of the dimension's values names it
        ann = model = model.model_fields[part].annotation
    return ann


def _value_fits(value: Any, kinds: set[type], literals: tuple) -> bool:
    if value is None:
        return type(None) in kinds
    if literals:
        return value in literals
    if isinstance(value, bool):  # a bool is an int to Python; to a config key it is not
        return bool in kinds
    if isinstance(value, int):
        return bool(kinds & {int, float})
    if isinstance(value, float):
        return float in kinds
    if isinstance(value, str):
        return bool(kinds & {str, Path})
    return False


def _unannotated(ann: Any) -> Any:
    """`Annotated[float, ...]` (the strict `Int`, `Float`, `Bool`) -> `float`; others unchanged."""
    return get_args(ann)[0] if get_origin(ann) is Annotated else ann


def dimension_problem(key: str, spec: ParamSpec) -> str | None:
    """Why `spec` cannot fill TrainConfig's `key` (None when it can, or the key is unknown)."""
    ann = _field_type(key)
    if ann is None:
        return None
    ann = _unannotated(ann)
    args = get_args(ann) if get_origin(ann) in (Union, types.UnionType) else (ann,)
    kinds: set[type] = set()
    literals: tuple = ()
    for a in map(_unannotated, args):
        if get_origin(a) is Literal:
            literals += get_args(a)
            kinds |= {type(v) for v in get_args(a)}
        elif isinstance(a, type):
            kinds.add(a)
    if kinds & {dict, list} or any(isinstance(k, type) and issubclass(k, BaseModel)
                                   for k in kinds):
        return None  # a section or a list: the probe validates it as a whole
    names = (f"one of {list(literals)}" if literals
             else "/".join(sorted(k.__name__ for k in kinds if k is not type(None))))
    if spec.type == "choice":
        bad = [v for v in spec.values or [] if not _value_fits(v, kinds, literals)]
        if bad:
            return f"choice value {bad[0]!r} does not fit train.{key}, which takes {names}"
        return None
    if float in kinds or (spec.type == "int" and int in kinds):
        return None
    if int in kinds and bool not in kinds:
        return (f"a {spec.type!r} dimension draws floats but train.{key} takes an integer; "
                "use type 'int' or a 'choice' of integers")
    return (f"a {spec.type!r} dimension draws numbers but train.{key} takes {names}; "
            "use a 'choice' of its values")

