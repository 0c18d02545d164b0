"""The README's promises: its minimal config runs, its links resolve, it stays a first page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import README, ROOT, readme_minimal_config

DOCS = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.slow
def test_readme_minimal_config_runs_a_sweep_end_to_end(finished_sweep):
    """The session's sweep is the README's minimal config, shrunk to tiny CPU models on the
    demo data (tests/conftest.py: finished_sweep), run through the CLI."""
    cfg = finished_sweep.cfg
    assert finished_sweep.path.read_text() == readme_minimal_config()
    assert cfg.name == "my_sketches"
    assert cfg.search.space, "the README's config searches something"
    assert finished_sweep.rc == 0, finished_sweep.err[-3000:]

    candidates = cfg.storage_path / "my_sketches" / "candidates"
    complete = [c.name for c in candidates.iterdir()
                if all((c / f"fold{k}.json").is_file() and (c / f"fold{k}.npz").is_file()
                       for k in range(cfg.data.n_folds))]
    assert complete, f"no candidate has all {cfg.data.n_folds} folds in {candidates}"


def test_readme_minimal_config_sets_only_commented_keys():
    lines = [ln for ln in readme_minimal_config().splitlines() if ln.strip()]
    for ln in lines:
        if ln.lstrip().startswith("#") or re.fullmatch(r"\s*[\w.]+:\s*", ln):
            continue  # a comment, or a section whose keys carry the comments
        assert "#" in ln, f"README minimal config: every key gets a one-line comment: {ln!r}"


def test_readme_is_a_first_page():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the rest belongs in docs/"
    # A commit hash (7-40 hex digits, with both a digit and a letter) ties a figure to one
    # commit: figures live in benchmarks/RESULTS-*.md.
    hashes = re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", text)
    assert not hashes, f"README.md: commit-hash-like words {hashes}"
    timings = re.findall(r"\d+\s*min(?:utes?)?\.?\s+\d+\s*s(?:ec(?:onds?)?)?\b", text)
    assert not timings, f"README.md: suite timings {timings}; link a RESULTS file instead"


def anchors(md: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_relative_links_point_at_files(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # links in code are not links
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        dest = doc.parent / path if path else doc
        if not dest.exists() or (anchor and dest.suffix == ".md"
                                 and anchor not in anchors(dest)):
            missing.append(target)
    assert not missing, f"{doc.relative_to(ROOT)}: links to missing files or headings: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_tests_that_exist(doc):
    """`tests/test_x.py::test_name` in the docs (the proofs of docs/reliability.md) exists."""
    missing = []
    for file, name in re.findall(r"(tests/test_\w+\.py)::(\w+)", doc.read_text()):
        src = ROOT / file
        if not src.is_file() or not re.search(rf"^\s*def {name}\(", src.read_text(), re.M):
            missing.append(f"{file}::{name}")
    assert not missing, f"{doc.relative_to(ROOT)}: names tests that do not exist: {missing}"
