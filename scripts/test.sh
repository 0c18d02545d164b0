#!/usr/bin/env bash
# Set up (or reuse) the environment and run the whole test suite, end-to-end tests included.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" for the quick subset.
# Two pytest-xdist workers, one per core of the 2-core CI machine (one process left a core idle
# while Ray started or a test waited). Tests that share a session-scoped sweep or a module's
# cluster run on one worker (tests/conftest.py); -n 0 runs in one process (e.g. for pdb).
set -euo pipefail
source "$(dirname "$0")/env.sh"
set -euo pipefail
# One torch thread per worker: with torch's default, a thread per core in each of the two
# workers, the in-process training tests fought over the cores (benchmarks/RESULTS-suite.md).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m pytest -n "${SKETCHTUNE_TEST_WORKERS:-2}" --dist loadgroup "$@"
