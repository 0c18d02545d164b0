#!/usr/bin/env bash
# Set up (or reuse) the environment and run the whole test suite, end-to-end tests included.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" for the quick subset.
set -euo pipefail
source "$(dirname "$0")/env.sh"
set -euo pipefail
exec python -m pytest "$@"
