"""benchmarks/scale.py --smoke: every measurement runs on tiny data, so the benchmark cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_scale_smoke_measures_every_section(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--smoke",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    c = res["cache"]
    assert set(c["decode"]) == {"1", "2"} and all(r["img_per_s"] > 0 for r in c["decode"].values())
    # The smoke data: 3 classes x 12 train, 3 x 2 test, cached at 32 px (+ the .npy header).
    assert {k: f["bytes"] for k, f in c["full"]["files"].items()} == {
        "train": 36 * 32 * 32 * 3 + 128, "test": 6 * 32 * 32 * 3 + 128}
    w = res["one"]["workers"][0]
    assert len(w["trainer"]) == len(w["bound"]) == 1
    assert all(r["img_per_s"] > 0 and 0 <= r["sys_share"] <= 1 for r in w["trainer"] + w["bound"])
    assert w["predict"]["images"] == 4
    assert res["one"]["peak_pss"][0] > 0 and res["one"]["peak_cache_pss"][0] > 0
    assert len(res["many"]["workers"]) == 2
    assert res["many"]["peak_pss_sum"] >= max(res["many"]["peak_pss"])
    assert "trainer / model-bound" in proc.stdout
