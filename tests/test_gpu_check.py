"""benchmarks/gpu_check.sh on the CPU with tiny backbones: steps a-e run and are reported (f,
torch.compile of a timm model, takes minutes on a CPU: tests/test_engine.py compiles there)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sketchtune.demo import make_demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_path_runs_every_step(tmp_path):
    data = tmp_path / "data"
    make_demo(data, preset="imagenet-sketch", classes=4, per_class=6, test_per_class=2,
              workers=1, progress=False)
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(ROOT / "benchmarks" / "gpu_check.sh"), "--data", str(data), "--device", "cpu",
         "--backbone", "test_resnet.r160_in1k", "--small", "test_convnext.r160_in1k",
         "--img-size", "32", "--batch-size", "4", "--bound-batches", "2", "--bound-warmup", "1",
         "--limit-scale", "8", "--steps", "abcde", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads((out / "gpu_check.json").read_text())
    steps = res["steps"]
    assert all(steps[k]["ok"] for k in "abcde"), steps
    assert steps["f"].get("skipped") and res["compiled_over_plain"] is None
    assert steps["a"]["backbone"] == "test_resnet.r160_in1k"
    assert steps["e"]["backbone"] == "test_convnext.r160_in1k"
    # 4 classes x 6 train images, fold 0 held out.
    assert 0 < steps["a"]["train_images"] < 24 and steps["a"]["img_per_s"] > 0
    assert steps["d"]["images"] == 8  # every test image predicted
    assert len(steps["c"]["img_per_s_each"]) == 2 and steps["c"]["combined_img_per_s"] > 0
    assert res["trainer_over_bound"] > 0
    assert (out / "gpu_check.md").read_text().startswith("# GPU check: cpu")


@pytest.mark.slow
def test_gpu_check_fails_when_a_step_fails(tmp_path):
    # No data there: step d cannot read the CSV; the check must say so and exit 1.
    proc = subprocess.run(
        [str(ROOT / "benchmarks" / "gpu_check.sh"), "--data", str(tmp_path / "none"),
         "--device", "cpu", "--backbone", "test_resnet.r160_in1k", "--steps", "d",
         "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    res = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert res["steps"]["d"]["ok"] is False and "FAILED" in proc.stdout
