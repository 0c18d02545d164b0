"""docs/config.md, generated from the config models: `python docs/configdoc.py --write`.

The sweep's models (`sketchtune/config/`) and the ensemble search's (`ensemble_search/config.py`),
which documents the `ensemble:` section that `SweepConfig` keeps as a plain mapping.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script, from anywhere

from ensemble_search.config import EnsembleConfig  # noqa: E402
from sketchtune.cli import OneLineParser  # noqa: E402
from sketchtune.config import SweepConfig  # noqa: E402

__all__ = ["COMMAND", "DOC", "main", "render", "sections"]

DOC = Path(__file__).resolve().parent / "config.md"
COMMAND = "python docs/configdoc.py --write"
# Sections that a model keeps as a plain mapping and another package validates.
_VALIDATED_ELSEWHERE: dict[str, type[BaseModel]] = {"ensemble": EnsembleConfig}

_HEADER = f"""\
# Config reference

Every key of a sweep config (`configs/sweep.yaml`, `configs/imagenet_sketch.yaml`), with its
type, its default and the reason for the default. The sweep, the trainer and the ensemble
commands all read the same file. An unknown key or a wrong type is an error naming the key
(ints and bools are strict: `yes` or `2.0` is not an int; `1e-3` is a float, as written), and so
is a key given twice;
`--set KEY=VALUE` overrides any key by its dotted name (`--set train.optim.lr=3e-4`), and
relative paths are relative to the directory the command runs from.

Generated from the models in `sketchtune/config/` and `ensemble_search/config.py` by
`{COMMAND}`: edit the descriptions there, not this file
(`tests/test_configdoc.py` fails when it is stale).
"""


def sections(model: type[BaseModel] = SweepConfig,
             prefix: str = "") -> list[tuple[str, type[BaseModel]]]:
    """(dotted key, model) for `model` and every model under it, depth first, in field order.

    The top level's key is ""; a model inside a map gets `<key>` (`search.space.<key>`).
    """
    out = [(prefix, model)]
    for name, field in model.model_fields.items():
        sub = _section_of(field.annotation)
        if not prefix and name in _VALIDATED_ELSEWHERE:
            sub = _VALIDATED_ELSEWHERE[name], ""
        if sub is not None:
            key = f"{prefix}.{name}" if prefix else name
            out += sections(sub[0], key + sub[1])
    return out


def _section_of(ann: Any) -> tuple[type[BaseModel], str] | None:
    """The model a field holds (and the key suffix to reach it), or None for a plain value."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann, ""
    if get_origin(ann) in (Union, types.UnionType):  # `Model | None`: a section that may be null
        models = [a for a in get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(models) == 1:
            return models[0], ""
    if get_origin(ann) is dict:
        value = get_args(ann)[1]
        if isinstance(value, type) and issubclass(value, BaseModel):
            return value, ".<key>"
    return None


def _type_name(ann: Any) -> str:
    origin, args = get_origin(ann), get_args(ann)
    if origin is Annotated:  # config.py's Int, Float, Bool: the type is the first argument
        return _type_name(args[0])
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names + (["null"] if type(None) in args else []))
    if origin is dict:
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}"
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if ann is Any:
        return "any"
    if ann is Path:
        return "path"
    return getattr(ann, "__name__", str(ann))


# pydantic keeps ge/gt/le/lt as annotated_types objects with an attribute of that name.
_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _constraints(field: FieldInfo) -> list[str]:
    out = []
    for meta in field.metadata:
        for attr, sign in _BOUNDS:
            if getattr(meta, attr, None) is not None:
                bound = getattr(meta, attr)
                out.append(f"{sign} {bound}" if isinstance(bound, int) else f"{sign} {bound:g}")
        if getattr(meta, "pattern", None):
            out.append(f"matching `{meta.pattern}`")
    return out


def _yaml(value: Any) -> str:
    """A default as it would be written in the YAML file."""
    if isinstance(value, Path):
        value = value.as_posix()
    elif isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()
    return text.removesuffix("...").strip()


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    return f"`{_yaml(value)}`"


def _anchor(title: str) -> str:
    # GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens.
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def _title(key: str) -> str:
    return f"`{key}`" if key else "Top level"


def _cell(text: str) -> str:
    # A pipe ends a table cell, even inside a code span; outside code spans, `<name>` would be
    # read as an HTML tag.
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    parts[::2] = [re.sub(r"<(?=[A-Za-z/])", "&lt;", p) for p in parts[::2]]
    return "`".join(parts)


def _row(prefix: str, name: str, field: FieldInfo) -> str:
    key = f"{prefix}.{name}" if prefix else name
    sub = _section_of(field.annotation)
    if sub is not None:
        title = _title(key + sub[1])
        kind = "map of str to " if sub[1] else ""
        typ = f"{kind}[{sub[0].__name__}](#{_anchor(title)})"
        default = "see its section" if not sub[1] else _default(field)
    else:
        typ = ", ".join([_type_name(field.annotation), *_constraints(field)])
        default = _default(field)
    return f"| `{key}` | {_cell(typ)} | {_cell(default)} | {_cell(field.description or '')} |"


def render() -> str:
    """docs/config.md's text: one section per model, a table of key, type, default, why."""
    parts = [_HEADER]
    found = sections()
    parts.append("\n".join(f"- [{_title(key)}](#{_anchor(_title(key))}): {model.__name__}"
                           for key, model in found) + "\n")
    for key, model in found:
        doc = inspect.cleandoc(model.__doc__ or "")
        parts.append(f"## {_title(key)}\n\n`{model.__name__}`: {doc}\n")
        rows = [_row(key, name, f) for name, f in model.model_fields.items()]
        parts.append("\n".join(["| key | type | default | what it does, and why this default |",
                                "|---|---|---|---|", *rows]) + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="docs/configdoc.py",
                                description="Print, write or check docs/config.md, generated "
                                            "from sketchtune/config.py.")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--write", action="store_true", help="write the file")
    what.add_argument("--check", action="store_true",
                      help="exit 1 if the file differs from what would be generated")
    p.add_argument("--path", type=Path, default=DOC, help="the file (default: docs/config.md)")
    args = p.parse_args(argv)
    prog = p.prog
    if args.path.is_dir():
        print(f"{prog}: error: {args.path}: is a folder, not a file; pass --path FILE",
              file=sys.stderr)
        return 2
    text = render()
    if args.check:
        if not args.path.is_file():
            print(f"{prog}: error: {args.path} is stale; run `{COMMAND}` (the file does not "
                  "exist)", file=sys.stderr)
            return 1
        if args.path.read_text(encoding="utf-8") != text:
            print(f"{prog}: error: {args.path} is stale; run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    if args.write:
        from sketchtune.errors import StoreError
        from sketchtune.fs import atomic_write_bytes  # temp + rename: never half-written

        try:
            atomic_write_bytes(args.path, text.encode("utf-8"))
        except StoreError as err:
            # The store's message advises storage_path; here the file is --path's.
            cause = err.__context__
            why = (cause.strerror or cause) if isinstance(cause, OSError) else err
            print(f"{prog}: error: {args.path}: cannot write ({why}); nothing was written; "
                  "choose another --path", file=sys.stderr)
            return 2
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
