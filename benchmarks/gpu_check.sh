#!/usr/bin/env bash
# The GPU check: synthetic data, then steps a-f of benchmarks/gpu_check.py, under 10 minutes on
# one H100/H200. Results: benchmarks/_work/gpu_check/gpu_check.{json,md}; exit 1 on any failure.
#
#   benchmarks/gpu_check.sh                       # on the GPU machine: full-size data, caformer_b36
#   benchmarks/gpu_check.sh --device cpu --backbone test_resnet.r160_in1k \
#       --small test_convnext.r160_in1k --scale 0.02 --img-size 32     # its CPU path (a test runs it)
#
# Options: --scale S (share of the 500 classes, default 1), --data DIR (use this data, make
# none), and every option of benchmarks/gpu_check.py (--device, --backbone, --small, --img-size,
# --batch-size, --limit-scale, --steps, --out).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scale=1 data="" rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    *) rest+=("$1"); shift ;;
  esac
done
# shellcheck disable=SC1091
source "$ROOT/scripts/env.sh"
if [ -z "$data" ]; then
  data="$ROOT/data/gpu_check_scale$scale"
  # Every core renders (about 2 CPU-minutes for the full 25,035 images); reused when present.
  timeout 240 python -m sketchtune.demo --preset imagenet-sketch --scale "$scale" --out "$data"
fi
exec python "$ROOT/benchmarks/gpu_check.py" --data "$data" ${rest[@]+"${rest[@]}"}
