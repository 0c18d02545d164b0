"""The config's field types: strict models, strict numbers, storage locations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
)

from ..fs import URI, location

__all__ = ["SEED", "Bool", "Float", "Int", "StorageLocation", "Strict"]


class Strict(BaseModel):
    # An unknown key is a typo until proven otherwise (nanoGPT's rule).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _location(value: Any) -> Path | URI:
    if isinstance(value, (str, Path, URI)) and str(value).strip():
        return location(value)
    raise ValueError(f"expected a folder or a storage URI (s3://bucket/path), got {value!r}")


# A local path or a cloud URI (`sketchtune.storage`); written back as the text it was given.
StorageLocation = Annotated[Path | URI, PlainValidator(_location),
                            PlainSerializer(str, when_used="json"),
                            WithJsonSchema({"type": "string"})]


# Field types that say what they mean. pydantic's lax mode reads YAML's `epochs: yes` (a bool)
# as 1, `epochs: 2.0` as 2 and `epochs: "3"` as 3, and a bool as 1.0 for a float: a config
# that means something else than it says. Ints and bools are strict. Floats stay lax for
# strings, because YAML 1.1 reads `1e-3` (no dot) as a string and users write it that way;
# they refuse bools, and NaN or infinity, which pass or bend every range check below.
def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


Int = Annotated[int, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]
Float = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]
# numpy's RandomState (the folds' StratifiedKFold, the ensemble's bagging) takes 0..2**32-1.
SEED = {"ge": 0, "le": 2**32 - 1}


