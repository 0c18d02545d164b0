"""first_line: the one line of a library error that a user message quotes."""

from __future__ import annotations

from sketchtune.cli import first_line as cli_first_line
from sketchtune.errors import first_line


def test_first_line_takes_the_first_non_empty_line_stripped():
    err = ValueError("\n  Error tokenizing data.  \nC error: line 3\n")
    assert first_line(err) == "Error tokenizing data."


def test_first_line_of_an_empty_error_is_its_type_name():
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("   \n")) == "RuntimeError"


def test_first_line_cuts_to_the_limit():
    assert first_line("x" * 500) == "x" * 160
    assert first_line(OSError("y" * 500), 120) == "y" * 120


def test_first_line_is_re_exported_by_the_cli_layer():
    assert cli_first_line is first_line
