#!/usr/bin/env bash
# Sets up a fresh virtual environment with torch and translution_ext[demo]
# (`pip install ".[demo]"`) and runs the Dynamic-MNIST demo with the installed
# package; results go to ./translution_demo (results.json, results.png) of the
# directory it was called from, or to --out DIR.
# Usage: bash scripts/demo.sh [demo args, e.g. --quick | --data mnist --root DIR]
#   VENV=.venv/demo          where the environment goes
#   TORCH_SPEC=torch==2.13.0 the torch to install first
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
caller="$PWD"
venv="${VENV:-$root/.venv/demo}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "${TORCH_SPEC:-torch==2.13.0}"
MAX_JOBS="${MAX_JOBS:-2}" "$venv/bin/pip" install --quiet "$root[demo]"

# The demo runs in an empty directory so that Python imports the installed package
# (with its compiled kernels), not the checkout's source folder ./translution_ext.
# Paths given to --out and --root stay relative to the caller's directory; the
# default --out comes first, so a given one (argparse keeps the last) replaces it.
# --require-native: the demo stops with an error rather than time the pure-PyTorch
# fallback if the kernels just compiled do not load.
args=(--require-native --out "$caller/translution_demo")
previous=""
for arg in "$@"; do
  case "$previous" in
    --out|--root) [[ "$arg" == /* ]] || arg="$caller/$arg" ;;
  esac
  case "$arg" in
    --out=*|--root=*) value="${arg#*=}"; [[ "$value" == /* ]] || arg="${arg%%=*}=$caller/$value" ;;
  esac
  args+=("$arg")
  previous="$arg"
done
cd "$(mktemp -d)"
"$venv/bin/python" -m translution_ext demo "${args[@]}"
