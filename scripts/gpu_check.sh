#!/usr/bin/env bash
# The GPU check, one command (about 4-5 minutes on one H200; see docs/gpu.md):
#   scripts/gpu_check.sh [--smoke] [--steps core,sync,trl,verl] [--json PATH]
# Installs the carried wheels when .whl/ holds them (scripts/gpu_check/download_wheels.sh makes them; run(carry=[".whl"])):
# .whl/common into /tmp/mgs_site (on PYTHONPATH for every step), .whl/verl into /tmp/mgs_site_verl (first on the verl
# step's PYTHONPATH only). Then runs scripts/gpu_check/run.py with this checkout on PYTHONPATH. PYTHON: the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
install() {  # folder, target
  if compgen -G "$1/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$2" "$1"/*.whl \
      || { echo "gpu_check: installing $1 failed" >&2; return 1; }
    return 0
  fi
  return 1
}
if install .whl/common /tmp/mgs_site; then export PYTHONPATH="/tmp/mgs_site${PYTHONPATH:+:$PYTHONPATH}"; fi
if install .whl/verl /tmp/mgs_site_verl; then export MGS_VERL_SITE=/tmp/mgs_site_verl; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" scripts/gpu_check/run.py "$@"
