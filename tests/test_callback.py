"""The MLflow callback module: Ray is imported only when the callback class is first used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_callback_import_does_not_import_ray():
    done = _python("import sys, sketchtune.callback, sketchtune.sweep\n"
                   "assert 'ray' not in sys.modules, 'ray was imported'\n")
    assert done.returncode == 0, done.stderr[-2000:]


def test_callback_class_is_a_tune_callback_built_once():
    done = _python("import pickle, sketchtune.callback as m\n"
                   "from ray.tune import Callback\n"
                   "cls = m.MlflowSweepCallback\n"
                   "assert issubclass(cls, Callback) and m.MlflowSweepCallback is cls\n"
                   # Tune pickles its callbacks with the experiment and restores them by name.
                   "assert pickle.loads(pickle.dumps(cls)) is cls\n")
    assert done.returncode == 0, done.stderr[-2000:]
