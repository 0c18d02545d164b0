"""first_line: the one line of a library error that a user message quotes."""

from __future__ import annotations

from sketchtune.errors import first_line


def test_first_line_takes_the_first_non_empty_line_stripped():
    err = ValueError("\n  Error tokenizing data.  \nC error: line 3\n")
    assert first_line(err) == "Error tokenizing data."


def test_first_line_of_an_empty_error_is_its_type_name():
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("   \n")) == "RuntimeError"


def test_first_line_cuts_to_the_limit_at_a_word_with_an_ellipsis():
    assert first_line("x" * 500) == "x" * 157 + "..."
    assert first_line(OSError("y" * 500), 120) == "y" * 117 + "..."
    cut = first_line("Max retries exceeded with url: /api (x)", 30)
    assert cut == "Max retries exceeded with..."
    assert first_line("short enough", 12) == "short enough"
