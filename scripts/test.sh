#!/usr/bin/env bash
# Set up (or reuse) the environment and run the whole test suite, end-to-end tests included.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" for the quick subset.
# Two pytest-xdist workers: the end-to-end tests spend much of their time waiting (Ray's start-up,
# a node's death, a store's retries), which the other worker fills. Tests that share a
# session-scoped sweep or a module's cluster run on one worker (tests/conftest.py); -n 0 turns
# the workers off (e.g. for pdb).
set -euo pipefail
source "$(dirname "$0")/env.sh"
set -euo pipefail
exec python -m pytest -n "${SKETCHTUNE_TEST_WORKERS:-2}" --dist loadgroup "$@"
