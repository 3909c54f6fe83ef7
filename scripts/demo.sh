#!/usr/bin/env bash
# Sets up a fresh virtual environment with torch and translution_ext[demo]
# (`pip install ".[demo]"`) and runs the Dynamic-MNIST demo; results go to
# ./translution_demo (results.json, results.png).
# Usage: bash scripts/demo.sh [demo args, e.g. --quick | --data mnist --root DIR]
#   VENV=.venv/demo          where the environment goes
#   TORCH_SPEC=torch==2.13.0 the torch to install first
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$root/.venv/demo}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "${TORCH_SPEC:-torch==2.13.0}"
MAX_JOBS="${MAX_JOBS:-2}" "$venv/bin/pip" install --quiet "$root[demo]"
"$venv/bin/python" -m translution_ext demo "$@"
