"""The CLIs' shared shape: argparse errors are one line, and --help says how --set works."""

from __future__ import annotations

import importlib

import pytest

CLIS = ["sketchtune.sweep", "sketchtune.train", "sketchtune.demo", "docs.configdoc",
        "ensemble_search.optimize", "ensemble_search.predict"]


@pytest.mark.parametrize("module", CLIS)
def test_cli_argparse_error_is_one_line(module: str, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main(["--no-such-option"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and "--no-such-option" in err and "usage:" not in err


@pytest.mark.parametrize("module", ["sketchtune.sweep", "ensemble_search.optimize"])
def test_cli_help_shows_the_set_forms(module: str, capsys):
    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse re-wraps the epilog
    assert "--set 'search.space={optim.lr: {type: loguniform," in out
    assert "--set search.space.optim.lr.high=1e-2" in out
