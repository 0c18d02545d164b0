"""Property-based CLI tests: a mutated config gives exit 0 (valid) or one line and exit 2.

A mutated config goes through the real CLI boundary (`sweep --dry-run`, `ensemble_search.optimize`
with no store: neither trains nor writes). `load_config` is the oracle: when it refuses the file,
the CLI must too. Derandomized, so a CI run repeats the same examples.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from ensemble_search import optimize
from sketchtune import sweep
from sketchtune.config import SweepConfig, load_config
from sketchtune.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
BASE = yaml.safe_load((ROOT / "configs" / "sweep.yaml").read_text())
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

garbage = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.sampled_from([2**40, -(2**40)])
    | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=3),
    max_leaves=6)


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path (dict keys and list indexes) in the config."""
    out = []
    items = node.items() if isinstance(node, dict) else \
        enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out += paths(v, (*prefix, k))
    return out


def retype(v: Any) -> Any:
    """The same value as another type: what lax parsing would quietly coerce back."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return float(v)
    if isinstance(v, float):
        return str(v)
    if isinstance(v, str):
        return [v]
    return str(v)


def mutate(data: st.DataObject) -> str:
    """A valid config with 1-3 random mutations, as YAML text."""
    cfg = copy.deepcopy(BASE)
    for _ in range(data.draw(st.integers(1, 3))):
        where = paths(cfg)
        if not where:
            break
        *parent_path, key = data.draw(st.sampled_from(where))
        parent = cfg
        for p in parent_path:
            parent = parent[p]
        op = data.draw(st.sampled_from(["delete", "rename", "replace", "retype", "nest"]))
        if op == "delete":
            del parent[key]
        elif op == "rename" and isinstance(parent, dict):
            parent[f"{key}_x" if data.draw(st.booleans()) else str(key).upper()] = \
                parent.pop(key)
        elif op == "replace":
            parent[key] = data.draw(garbage)
        elif op == "retype":
            parent[key] = retype(parent[key])
        else:  # nest: the value one level deeper, under a key of its own
            parent[key] = {data.draw(st.text(min_size=1, max_size=6)): parent[key]}
    text = yaml.safe_dump(cfg, sort_keys=False)
    if data.draw(st.booleans()):  # duplicate a key: one `key:` line, repeated
        lines = text.splitlines(keepends=True)
        keyed = [i for i, line in enumerate(lines) if re.match(r"\s*[\w.]+:", line)]
        i = data.draw(st.sampled_from(keyed))
        lines.insert(i + 1, lines[i])
        text = "".join(lines)
    return text


def run(main: Any, argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, err.getvalue()


def oracle(path: Path) -> bool:
    try:
        load_config(path)
    except ConfigError:
        return False
    return True


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Iterator[Path]:
    """The working directory of every example: relative paths (a deleted storage_path falls
    back to `sweeps`) land here, never in the repository."""
    d = tmp_path_factory.mktemp("props")
    BASE["storage_path"] = str(d / "sweeps")
    BASE["tracking_uri"] = f"sqlite:///{d / 'mlflow.db'}"
    BASE["data"].update(train_csv=str(d / "data/train.csv"), test_csv=str(d / "data/test.csv"))
    old = os.getcwd()
    os.chdir(d)
    yield d
    os.chdir(old)


@pytest.mark.slow
@SETTINGS
@given(data=st.data())
def test_sweep_dry_run_on_any_mutated_config_is_exit_0_or_one_line(workdir, data):
    path = workdir / "mutated.yaml"
    path.write_text(mutate(data))
    valid = oracle(path)
    rc, err = run(sweep.main, [str(path), "--dry-run", "--quiet"])
    assert rc in (0, 2), err
    if not valid:
        assert rc == 2
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0], err
    # Nothing written beside the config: no folds, caches, mlflow.db or sweeps.
    assert sorted(p.name for p in workdir.iterdir()) == ["mutated.yaml"]


@settings(SETTINGS, max_examples=50)
@given(data=st.data())
def test_optimize_on_any_mutated_config_is_one_line_exit_2(workdir, data):
    # No sweep has run: a valid config ends at "no prediction store", an invalid one sooner.
    path = workdir / "mutated.yaml"
    path.write_text(mutate(data))
    valid = oracle(path)
    rc, err = run(optimize.main, [str(path), "--quiet"])
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert (str(path) in lines[0]) if not valid else ("no prediction store" in lines[0])


def _leaf_ints(node: Any, model: Any = SweepConfig, prefix: tuple = ()) -> list[tuple]:
    """Paths of the config's values that SweepConfig types as int."""
    out = []
    for k, v in node.items():
        field = model.model_fields.get(k)
        ann = getattr(field, "annotation", None)
        if isinstance(v, dict) and isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _leaf_ints(v, ann, (*prefix, k))
        elif ann is int and type(v) is int:
            out.append((*prefix, k))
    return out


@settings(SETTINGS, max_examples=30)
@given(data=st.data())
def test_sweep_refuses_an_int_given_as_bool_float_or_string(workdir, data):
    # Lax parsing would read each as the int it resembles: the config would train on a value
    # it does not say. The refusal names the key and the file.
    key = data.draw(st.sampled_from(_leaf_ints(BASE)))
    cfg = copy.deepcopy(BASE)
    parent = cfg
    for p in key[:-1]:
        parent = parent[p]
    v = parent[key[-1]]
    parent[key[-1]] = data.draw(st.sampled_from([float(v), str(v)] + ([bool(v)] if v in (0, 1)
                                                                        else [])))
    path = workdir / "mutated.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    rc, err = run(sweep.main, [str(path), "--dry-run", "--quiet"])
    assert rc == 2 and str(path) in err and ".".join(key) in err, err
