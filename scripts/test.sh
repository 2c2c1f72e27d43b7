#!/usr/bin/env bash
# One command from a fresh clone to a green test run:
#   ./scripts/test.sh [extra pytest args]
# Creates .venv (reused when present), installs torch first, then this package with its test extras (trl and verl
# side by side, as users install them) under a constraint that keeps that torch, then runs pytest.
#
# torch: TORCH_VERSION (default 2.13.0, the tested one) from pip's configured index. On Linux the public index's
# wheel is a CUDA build (with its nvidia-* packages, a few GB); the tests run on the CPU with either build. For the
# CPU build: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu ./scripts/test.sh
# A torch of that version already in the venv (CPU or CUDA build) is kept. Other settings: PYTHON, VENV.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
EXTRAS="test,trl,verl,tools,plot,torchjd,merge"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "$PY" -m pip install --quiet "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
else
  "$PY" -m pip install --quiet "torch==$TORCH_VERSION"
fi
"$PY" -W ignore -c "import torch; print('torch', torch.__version__, '(CUDA build)' if torch.version.cuda else '(CPU build)')"
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"  # matches the CPU build's local version (2.13.0+cpu) too
"$PY" -m pip install --quiet -c "$CONSTRAINTS" -e ".[$EXTRAS]"
rm -f "$CONSTRAINTS"
exec "$PY" -m pytest --durations=15 "$@"
