# Source me: makes (once) or reuses the project's virtual environment and activates it.
#
# The environment lives outside the checkout (default ~/.cache/sketchtune/venv, override with
# SKETCHTUNE_VENV) so every clone on a machine, CI's fresh clone included, reuses one install.
# The project itself is not installed into it: PYTHONPATH points at this checkout, so two
# clones never import each other's code. A stamp of pyproject.toml decides when to re-install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SKETCHTUNE_VENV:-$HOME/.cache/sketchtune/venv}"
PY="${SKETCHTUNE_PYTHON:-python3}"
stamp="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.sketchtune-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing dependencies into $VENV (first time: a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" - "$ROOT/pyproject.toml" > "$VENV/requirements.txt" <<'PYEOF'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["test"]))
PYEOF
  "$VENV/bin/python" -m pip install -q -r "$VENV/requirements.txt"
  echo "$stamp" > "$VENV/.sketchtune-stamp"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
set +eu +o pipefail
