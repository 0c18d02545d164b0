"""The import contracts of pyproject.toml hold, every module is in a layer, and no cycle exists."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sketchtune", "ensemble_search")


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)


def test_layers_every_import_contract_is_kept():
    # A process of its own: import-linter's CLI reconfigures logging (dictConfig), which would
    # silence the loggers of every module imported before it for the rest of the session.
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_layers_every_sketchtune_module_is_in_exactly_one_layer():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in contracts["contracts"] if c["type"] == "layers")["layers"]
    placed = [m.strip() for layer in layers for m in layer.split(":")]
    modules = {f"sketchtune.{p.stem}" for p in (ROOT / "sketchtune").glob("*.py")
               if p.stem != "__init__"} | {"sketchtune.config"}
    assert sorted(placed) == sorted(modules)


def _cycles(g: grimp.ImportGraph) -> list[list[str]]:
    """The import cycles of `g`: Tarjan's strongly connected components of two or more."""
    edges = {m: g.find_modules_directly_imported_by(m) & g.modules for m in g.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                cycles.append(sorted([v, *comp]))

    for m in sorted(g.modules):
        if m not in index:
            visit(m)
    return cycles


def test_layers_no_import_cycle_among_the_project_modules():
    assert _cycles(_graph()) == []


def test_layers_the_cycle_check_finds_a_cycle():
    # The check above must be able to fail: one back edge makes a cycle through the layers.
    g = _graph()
    g.add_import(importer="sketchtune.errors", imported="sketchtune.sweep")
    cycles = _cycles(g)
    assert len(cycles) == 1 and {"sketchtune.errors", "sketchtune.sweep"} <= set(cycles[0])
