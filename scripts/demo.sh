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
  # Beside it, what optimize expected without the labels (ensemble.json's estimate).
  python - <<'PYEOF'
import json
import pandas as pd
sub = pd.read_csv("sweeps/demo/ensemble/submission.csv")
truth = pd.read_csv("data/demo/test_labels.csv")
m = sub.merge(truth, on="image_path", suffixes=("", "_true"), validate="1:1")
true = (m.target == m.target_true).mean()
s = json.load(open("sweeps/demo/ensemble/ensemble.json"))["scores"]
acc, lo, hi = (s.get(f"submission_estimate_{k}") for k in ("acc", "low", "high"))
est = "not made" if acc is None else f"{acc:.3f} [{lo:.3f}, {hi:.3f}]"
print(f"demo test accuracy of the submission ({len(m)} images): estimate {est}, "
      f"true {true:.3f}")
PYEOF
fi
echo
echo "done. Look at the runs:  mlflow ui --host 127.0.0.1   (then open http://127.0.0.1:5000)"
