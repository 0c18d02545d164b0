"""ensemble.json's schema: the fields `predict` uses, strictly typed; evidence sections free."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import numpy as np
import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr

from sketchtune import fs
from sketchtune.errors import EnsembleError
from sketchtune.fs import Location

__all__ = ["FORMAT", "CandidateWeight", "EnsembleSpec", "read_ensemble"]

# The ensemble.json layout this version writes and reads. A file of another format (a newer
# sketchtune's) may mean something else by the same fields: refused, not read as this one.
FORMAT = 1

# Weights are written as float64 from weights normalised to sum to 1; a hand edit that
# drifts further than this is a mistake, not rounding.
SUM_TOL = 1e-6

# strict: JSON text ("0.5"), booleans and null are not numbers; an int (1) is a float.
_Weight = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
# optimize fits temperatures in [1/20, 20] (calibration, methods.fit_temperature). Far beyond
# that, softmax(log p / T) over- or underflows: T = 1e-300 made every row NaN and the
# submission all class 0, exit 0. This range leaves a hand edit room and no such failure.
T_RANGE = (1e-3, 1e3)


def _temperature_in_range(t: float) -> float:
    if not T_RANGE[0] <= t <= T_RANGE[1]:
        raise ValueError(f"must be in [{T_RANGE[0]:g}, {T_RANGE[1]:g}] (optimize fits within "
                         "[0.05, 20]; beyond the range the softmax over- or underflows)")
    return t


_Temperature = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False),
                         AfterValidator(_temperature_in_range)]
_Classes = Annotated[int, Field(strict=True, gt=0)]


class CandidateWeight(BaseModel):
    """One chosen candidate: its store id, its weight, its temperature and its display name.

    No other key: optimize writes only these, so another is a hand edit's typo, and a
    misspelt `temprature` would otherwise be dropped and the candidate read uncalibrated.
    """

    model_config = ConfigDict(extra="forbid")

    candidate_id: Annotated[StrictStr, Field(min_length=1)]
    name: StrictStr | None = None  # `<backbone>-<id>`, for people; predict does not use it
    weight: _Weight
    # This candidate's own calibration, applied before weighting (`optimized` fits one per
    # candidate); absent: 1.0, none.
    temperature: _Temperature = 1.0


class EnsembleSpec(BaseModel):
    """What predict reads from ensemble.json. Other keys (scores, methods, ...) are evidence.

    Optional fields take their default only when absent: an explicit `null` is refused, so
    `temperature: null` (or 0) is never read as 1.
    """

    model_config = ConfigDict(extra="allow")

    # First: a newer file is refused for its format, before fields it may shape otherwise.
    # Absent: a hand-written file, read as this format.
    format: Annotated[int, Field(strict=True)] = FORMAT
    candidates: Annotated[list[CandidateWeight], Field(min_length=1)]
    temperature: _Temperature = 1.0
    # Absent: not checked (a hand-written file); the None default is not validated, so an
    # explicit null is still refused.
    num_classes: _Classes = None  # type: ignore[assignment]
    method: str | None = None

    @pydantic.field_validator("format")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value != FORMAT:
            raise ValueError(f"this version reads format {FORMAT}, not {value} (a file from "
                             "another sketchtune version): run ensemble_search.optimize again")
        return value

    @pydantic.field_validator("candidates")
    @classmethod
    def _weights_sum_to_one(cls, cands: list[CandidateWeight]) -> list[CandidateWeight]:
        seen: dict[str, int] = {}
        for i, c in enumerate(cands):
            if c.candidate_id in seen:
                raise ValueError(f"candidate {c.candidate_id!r} is listed twice "
                                 f"([{seen[c.candidate_id]}] and [{i}])")
            seen[c.candidate_id] = i
        total = math.fsum(c.weight for c in cands)
        if abs(total - 1.0) > SUM_TOL:
            raise ValueError(f"weights must sum to 1 (within {SUM_TOL}) but sum to {total:.9g}")
        return cands

    @property
    def ids(self) -> list[str]:
        return [c.candidate_id for c in self.candidates]

    @property
    def temperatures(self) -> np.ndarray:
        """(M,) float64 per-candidate temperatures, in `candidates` order (1.0: none)."""
        return np.array([c.temperature for c in self.candidates], dtype=np.float64)

    @property
    def weights(self) -> np.ndarray:
        """(M,) float64, in `candidates` order."""
        return np.array([c.weight for c in self.candidates], dtype=np.float64)


def _where(loc: tuple[Any, ...]) -> str:
    """pydantic's ('candidates', 0, 'weight') -> 'candidates[0].weight'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def read_ensemble(path: Location | str) -> EnsembleSpec:
    """ensemble.json, validated; EnsembleError naming the file and the first bad field."""
    path = fs.location(path)
    try:
        raw = json.loads(fs.read_bytes(path).decode("utf-8"))
    except FileNotFoundError:
        raise EnsembleError(f"{path}: ensemble file not found (run ensemble_search.optimize)") \
            from None
    except IsADirectoryError:
        raise EnsembleError(f"{path}: is a folder, not an ensemble.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EnsembleError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise EnsembleError(f"{path}: must be a JSON object with a 'candidates' list, not "
                            f"{type(raw).__name__}")
    try:
        return EnsembleSpec.model_validate(raw)
    except pydantic.ValidationError as err:
        e = err.errors()[0]
        field = _where(e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        got = f" (got {json.dumps(e['input'])})" if e["type"] != "missing" and not isinstance(
            e["input"], (dict, list)) else ""
        raise EnsembleError(f"{path}: {field}: {msg}{got}") from None
