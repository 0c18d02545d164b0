"""docs/config.md: generated from the config models, complete, current, and named by --help."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import sketchtune.config as config
from docs import configdoc
from ensemble_search.config import EnsembleConfig
from sketchtune.cli import base_parser


def config_models() -> list[type[BaseModel]]:
    """Every pydantic model of the config package, and the ensemble search's `EnsembleConfig`."""
    return [obj for obj in [*vars(config).values(), EnsembleConfig]
            if isinstance(obj, type) and issubclass(obj, BaseModel)
            and obj.__module__.startswith(config.__name__) and obj.model_fields
            or obj is EnsembleConfig]


def leaf_keys(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        out += leaf_keys(v, key) if isinstance(v, dict) and v else [key]
    return out


def test_config_md_is_up_to_date():
    have = configdoc.DOC.read_text(encoding="utf-8") if configdoc.DOC.is_file() else ""
    assert have == configdoc.render(), \
        f"docs/config.md is stale: run `{configdoc.COMMAND}` and commit it"


@pytest.mark.parametrize("model", config_models(), ids=lambda m: m.__name__)
def test_every_config_field_has_a_description(model: type[BaseModel]):
    missing = [name for name, f in model.model_fields.items()
               if not (f.description or "").strip()]
    assert not missing, f"{model.__name__}: no description for {missing} in sketchtune/config.py"


def test_configdoc_sections_cover_every_config_model():
    assert {m for _, m in configdoc.sections()} == set(config_models())


def test_configdoc_render_has_a_row_for_every_dotted_key():
    text = configdoc.render()
    keys = leaf_keys(config.SweepConfig().model_dump(mode="json"))
    keys += [f"search.space.<key>.{k}" for k in config.ParamSpec.model_fields]
    missing = [k for k in keys if f"| `{k}` |" not in text]
    assert not missing and "train.optim.lr" in keys


def test_configdoc_render_shows_defaults_as_yaml_and_keeps_tables_intact():
    text = configdoc.render()
    assert "| `train.sched.warmup_lr` | float, >= 0 | `1.0e-06` |" in text
    assert "| `train.aug.grid_distort_limit` | [float, float] | `[-0.03, 0.05]` |" in text
    assert "| `search.space.<key>.type` | one of uniform, loguniform, int, choice | required |" \
        in text
    # Every table row has exactly the four cells of the header (a stray pipe would add one).
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows and all(len(re.findall(r"(?<!\\)\|", r)) == 5 for r in rows)


def test_configdoc_links_point_to_headings():
    text = configdoc.render()
    anchors = {configdoc._anchor(h) for h in re.findall(r"^## (.+)$", text, flags=re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and links <= anchors


def test_configdoc_check_and_write(tmp_path: Path, capsys):
    path = tmp_path / "config.md"
    assert configdoc.main(["--check", "--path", str(path)]) == 1
    assert f"{path} is stale; run `{configdoc.COMMAND}`" in capsys.readouterr().err
    assert configdoc.main(["--write", "--path", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == configdoc.render()
    assert configdoc.main(["--check", "--path", str(path)]) == 0
    path.write_text(configdoc.render() + "edited by hand\n")
    assert configdoc.main(["--check", "--path", str(path)]) == 1


@pytest.mark.parametrize("flag", ["--check", "--write"])
def test_configdoc_path_that_is_a_folder_is_one_line_exit_2(tmp_path: Path, capsys, flag):
    assert configdoc.main([flag, "--path", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("docs/configdoc.py: error:") and str(tmp_path) in line
    assert "is a folder" in line


def test_configdoc_unwritable_path_names_the_file_and_the_option(capsys):
    assert configdoc.main(["--write", "--path", "/proc/sketchtune-config.md"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "/proc/sketchtune-config.md: cannot write" in line and "--path" in line
    assert "storage_path" not in line  # the store's hint does not apply to this file


@pytest.mark.parametrize("module", ["sketchtune.sweep", "sketchtune.train",
                                    "ensemble_search.optimize", "ensemble_search.predict"])
def test_every_config_cli_help_points_to_config_md(module: str, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(f"usage: python -m {module}")
    assert "docs/config.md" in out


def test_base_parser_epilog_names_a_file_that_exists():
    epilog = base_parser("x", "y").epilog
    name = re.search(r"docs/config\.md", epilog or "")
    assert name and (configdoc.DOC.parent.parent / name.group(0)).is_file()
