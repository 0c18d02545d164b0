#!/usr/bin/env bash
# The README's pictures, from a real run of the demo: the ensemble search's plots, one trial's
# training curve from MLflow, and a headless-Chromium screenshot of the MLflow UI, into
# docs/images/. Idempotent: the demo reuses every finished trial, the PNGs are overwritten.
# Needs Debian's chromium + chromium-driver (apt-get install chromium chromium-driver).
set -euo pipefail
source "$(dirname "$0")/env.sh"
set -euo pipefail
CONFIG="${1:-configs/sweep.yaml}"
SKETCHTUNE_QUIET="${SKETCHTUNE_QUIET-1}" scripts/demo.sh "$CONFIG"
python docs/make_pictures.py "$CONFIG" --out docs/images
