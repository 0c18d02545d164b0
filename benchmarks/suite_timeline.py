"""When each test ran on which pytest-xdist worker: a pytest plugin, and its summary.

    python -m pytest -p benchmarks.suite_timeline ...   # writes $SUITE_TIMELINE/<worker>.tsv
    python benchmarks/suite_timeline.py DIR             # per worker: tests, busy s, last end;
                                                        # then the tests over 20 s
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

_out = None


def _write(kind: str, nodeid: str) -> None:
    global _out
    if _out is None:
        folder = Path(os.environ.get("SUITE_TIMELINE", "benchmarks/_work/suite"))
        folder.mkdir(parents=True, exist_ok=True)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        _out = open(folder / f"{worker}.tsv", "a", buffering=1)  # noqa: SIM115
    _out.write(f"{kind}\t{time.time():.2f}\t{nodeid}\n")


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    _write("start", nodeid)


def pytest_runtest_logfinish(nodeid: str, location: object) -> None:
    _write("end", nodeid)


def summary(folder: Path) -> str:
    files = sorted(folder.glob("gw*.tsv")) or sorted(folder.glob("main.tsv"))  # -n 0: one
    if not files:
        raise SystemExit(f"suite_timeline: no <worker>.tsv in {folder}")
    rows = {f.stem: [ln.split("\t") for ln in f.read_text().splitlines()] for f in files}
    t0 = min(float(r[1]) for rs in rows.values() for r in rs)
    lines, long = [], []
    for worker, rs in rows.items():
        start, busy = {}, 0.0
        for kind, t, nodeid in rs:
            if kind == "start":
                start[nodeid] = float(t)
            else:
                d = float(t) - start.pop(nodeid)
                busy += d
                long.append((d, float(t) - d - t0, worker, nodeid))
        end = max(float(r[1]) for r in rs) - t0
        lines.append(f"{worker}: {len(rs) // 2} tests, busy {busy:.0f} s, last end {end:.0f} s")
    lines += [f"{d:6.1f} s  from {at:4.0f} s on {w}  {n}" for d, at, w, n in
              sorted(long, reverse=True) if d > 20]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(Path(sys.argv[1])))
