#!/usr/bin/env bash
# The test suite's wall time as CI sees it: a fresh clone of this checkout's HEAD, the quick
# subset, then the whole suite (README's test command), with a timeline of each worker.
#   benchmarks/suite.sh            # about 20 minutes on the 2-core CI machine
# Figures: benchmarks/RESULTS-suite.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone -q "$ROOT" "$work/clone"
cd "$work/clone"
for run in quick full; do
  export SUITE_TIMELINE="$work/$run"
  args=(-q -p benchmarks.suite_timeline)
  [ "$run" = quick ] && args+=(-m "not slow")
  s=$(date +%s)
  PYTEST_ADDOPTS="${args[*]@Q}" bash .ci/run > "$work/$run.log" 2>&1 || { tail -20 "$work/$run.log"; exit 1; }
  echo "$run: $(tail -1 "$work/$run.log" | tr -d '=') (wall with set-up $(( $(date +%s) - s )) s)"
  python3 benchmarks/suite_timeline.py "$SUITE_TIMELINE" | sed 's/^/  /'
done
echo "commit $(git rev-parse --short HEAD); $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
