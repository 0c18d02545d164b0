"""Loading a config: YAML (duplicate keys refused), dotted `--set` overrides, validation as one
line naming the key, and paths made absolute."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, first_line
from ..fs import URI
from .sweep import SweepConfig
from .train import TrainConfig

__all__ = ["DuplicateKeyError", "UniqueKeyLoader", "apply_overrides", "load_config",
           "parse_overrides", "read_yaml", "resolve_paths", "validate", "with_train_overrides"]


def _format_error(err: ValidationError, source: str, raw: dict[str, Any],
                  section: tuple[str, ...] = ()) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in (*section, *e["loc"]))
    value = _lookup(raw, e["loc"])
    got = f" (got {value!r})" if value is not _MISSING else ""
    msg = e["msg"].removeprefix("Value error, ")
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    # A check across sections (a model validator of the whole config) names its keys itself.
    return f"{source}: {key}: {msg}{got}{more}" if key else f"{source}: {msg}{more}"


_MISSING = object()


def _lookup(raw: Any, loc: tuple[Any, ...]) -> Any:
    # By pydantic's loc, not a dotted string: search.space's keys contain dots themselves.
    cur = raw
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            cur = cur[part]
        else:
            return _MISSING
    return cur


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping gives one key twice; the message is one line with both lines."""


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping.

    YAML 1.1 loaders keep the last value silently, so `epochs: 50` above a forgotten
    `epochs: 1` trains for one epoch. A `<<: *anchor` merge may still be overridden by a key
    beside it: that is what merging is for.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
                seen.setdefault(key, line)
            except TypeError:  # an unhashable key: SafeLoader's own error names it below
                continue
            if first is not None:
                raise DuplicateKeyError(f"duplicate key {key!r} at line {line} (first at line "
                                        f"{first}); YAML would keep the last one silently")
        return super().construct_mapping(node, deep=deep)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`["a.b=1", "c=[x, y]"]` -> `{"a.b": 1, "c": ["x", "y"]}`; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=5")
        try:
            out[key.strip()] = yaml.load(value, Loader=UniqueKeyLoader) if value.strip() else None
        except DuplicateKeyError as err:
            raise ConfigError(f"--set {item!r}: {err}") from None
        except yaml.YAMLError:  # not YAML: the text itself (a name with a colon, say)
            out[key.strip()] = value
    return out


def _is_dotted_map(path: list[Any]) -> bool:
    # Maps whose keys are themselves dotted keys into `train` (`optim.lr`): search.space and
    # each fixed candidate. A --set path into one is matched against its keys, longest first,
    # instead of being split at every dot.
    return path == ["search", "space"] or (len(path) == 2 and path[0] == "candidates")


def _space_hint(dotted: str, rest: list[str], space: dict[str, Any]) -> str:
    name = ".".join(rest[:-1]) if len(rest) > 1 else rest[0]
    have = f" (it has {', '.join(map(str, space))})" if space else ""
    return (f"override {dotted!r}: search.space has no dimension {name!r}{have}; give a new "
            f"one whole: --set 'search.space.{name}={{type: uniform, low: 0.1, high: 0.5}}'")


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `raw` with dotted keys set; intermediate dicts are created.

    A list is entered by index (`candidates.0.optim.lr`). Inside `search.space` and a
    candidate, whose keys contain dots, the longest key the path starts with is used
    (`search.space.optim.lr.high` is `high` of the dimension `optim.lr`); no such key makes
    the rest of the path one new key.
    """
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        cur: Any = raw
        path: list[Any] = []
        i = 0
        while True:
            if isinstance(cur, list):
                n = len(cur)
                if not (parts[i].isdigit() and int(parts[i]) < n):
                    raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:i])!r} is a list "
                                      f"of {n}; give an index below {n} or set the list whole")
                key: Any = int(parts[i])
                j = i + 1
            elif _is_dotted_map(path):
                j = next((j for j in range(len(parts), i, -1)
                          if ".".join(parts[i:j]) in cur), len(parts))
                key = ".".join(parts[i:j])
                if key not in cur and path == ["search", "space"] and not isinstance(value, dict):
                    raise ConfigError(_space_hint(dotted, parts[i:], cur))
            else:
                key, j = parts[i], i + 1
            if j == len(parts):
                cur[key] = value
                break
            nxt = cur[key] if isinstance(cur, list) else cur.get(key)
            if nxt is None:
                nxt = cur[key] = {}
            if not isinstance(nxt, (dict, list)):
                raise ConfigError(f"override {dotted!r}: {'.'.join(parts[:j - 1] + [str(key)])!r} "
                                  f"is a value, not a section; set it itself")
            cur, path, i = nxt, [*path, key], j
    return raw


def validate(model: type[BaseModel], raw: dict[str, Any], source: str,
             section: tuple[str, ...] = ()) -> Any:
    """`model` from `raw` (the `section` of a config file, for messages); one ConfigError line
    naming `source` and the dotted key otherwise."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source, raw, section)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    """The config file's top-level mapping; every way it can fail is one ConfigError line."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file (e.g. configs/sweep.yaml)")
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid YAML: not UTF-8 text ({err.reason} at byte "
                          f"{err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config: {err.strerror or err}") from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {first_line(err)}") from None
    if raw is None or raw == {}:
        # Every default is the demo's: a sweep of nothing the user chose.
        raise ConfigError(f"{path}: empty config; copy configs/sweep.yaml and edit it")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def load_config(
    path: str | Path, overrides: list[str] | None = None, model: type[BaseModel] = SweepConfig
) -> Any:
    """Read YAML, apply `--set` overrides, validate, and make every path absolute."""
    path = Path(path)
    raw = read_yaml(path)
    source = f"{path}" + (" (with --set overrides)" if overrides else "")
    try:
        raw = apply_overrides(raw, parse_overrides(overrides))
    except ConfigError as err:  # name the config the bad --set was meant for
        raise ConfigError(f"{source}: {err}") from None
    cfg = validate(model, raw, source)
    if isinstance(cfg, SweepConfig):
        cfg = resolve_paths(cfg)
    return cfg


def resolve_paths(cfg: SweepConfig, base: Path | None = None) -> SweepConfig:
    """Absolute paths, relative to `base` (default: the working directory).

    Ray runs each trial in a directory of its own, so a relative path would point
    somewhere else inside a trial.
    """
    base = (base or Path.cwd()).resolve()

    def absolute(p: Path | URI | None) -> Path | URI | None:
        if p is None or isinstance(p, URI) or p.is_absolute():  # a URI is absolute already
            return p
        return base / p

    d = cfg.data
    data = d.model_copy(
        update={
            k: absolute(getattr(d, k))
            for k in ("train_csv", "test_csv", "image_root", "test_image_root", "folds_csv",
                      "cache_dir")
        }
    )
    upd: dict[str, Any] = {"data": data}
    upd["storage_path"] = absolute(cfg.storage_path)
    if cfg.tracking_uri is None:
        # MLflow's own default: the environment's URI first, so an exported server is not
        # silently bypassed for a local file.
        upd["tracking_uri"] = (os.environ.get("MLFLOW_TRACKING_URI")
                               or f"sqlite:///{base / 'mlflow.db'}")
    mw = cfg.train.model.weights_file
    if mw is not None:
        upd["train"] = cfg.train.model_copy(
            update={"model": cfg.train.model.model_copy(update={"weights_file": absolute(mw)})}
        )
    return cfg.model_copy(update=upd)


def with_train_overrides(base: TrainConfig, overrides: dict[str, Any], source: str) -> TrainConfig:
    """Apply dotted overrides (`optim.lr`, `model.name`) to a TrainConfig and validate again."""
    raw = apply_overrides(base.model_dump(mode="json"), overrides)
    return validate(TrainConfig, raw, source)

