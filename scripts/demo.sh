#!/usr/bin/env bash
# The main job on the bundled demo data, from a fresh clone: set up, make the demo data,
# sweep (Ray Tune + Optuna + ASHA, tracked in MLflow), ensemble search, submission.
# Idempotent: a second run reuses the environment, the data, and every finished trial.
set -euo pipefail
source "$(dirname "$0")/env.sh"
set -euo pipefail
CONFIG="${1:-configs/sweep.yaml}"
python -m sketchtune.demo --out data/demo
python -m sketchtune.sweep "$CONFIG" ${SKETCHTUNE_QUIET:+--quiet}
python -m ensemble_search.optimize "$CONFIG" ${SKETCHTUNE_QUIET:+--quiet}
python -m ensemble_search.predict "$CONFIG" ${SKETCHTUNE_QUIET:+--quiet}
echo
echo "done. Look at the runs:  mlflow ui --host 127.0.0.1   (then open http://127.0.0.1:5000)"
