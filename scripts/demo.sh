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
if [ "$CONFIG" = configs/sweep.yaml ]; then
  # The demo ships its test labels, so the submission can be scored (real test sets cannot).
  python - <<'PYEOF'
import pandas as pd
sub = pd.read_csv("sweeps/demo/ensemble/submission.csv")
truth = pd.read_csv("data/demo/test_labels.csv")
m = sub.merge(truth, on="image_path", suffixes=("", "_true"), validate="1:1")
print(f"demo test accuracy of the submission: {(m.target == m.target_true).mean():.4f} "
      f"({len(m)} images)")
PYEOF
fi
echo
echo "done. Look at the runs:  mlflow ui --host 127.0.0.1   (then open http://127.0.0.1:5000)"
