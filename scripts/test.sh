#!/usr/bin/env bash
# One command from a fresh clone to a green test run:
#   ./scripts/test.sh [extra pytest args]
# Creates .venv (reused when present), installs the CPU build of torch 2.13.0 first, then this
# package with its test extras (trl and verl side by side, as users install them) under a constraint that keeps that torch, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet "torch==2.13.0"
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==2.13.0" > "$CONSTRAINTS"
"$PY" -m pip install --quiet -c "$CONSTRAINTS" -e ".[test,trl,verl,tools,plot,torchjd]"
exec "$PY" -m pytest --durations=15 "$@"
