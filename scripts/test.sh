#!/usr/bin/env bash
# Sets up a fresh virtual environment, installs torch and translution_ext the
# way a user does (`pip install ".[demo,export]"`: the demo, plot and ONNX tests need
# the extras), and runs the test suite against the installed package.  Usage: bash scripts/test.sh [extra pytest args]
#   VENV=.venv/test          where the environment goes
#   TORCH_SPEC=torch==2.13.0 the torch to install first
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$root/.venv/test}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "${TORCH_SPEC:-torch==2.13.0}" numpy pytest
MAX_JOBS="${MAX_JOBS:-2}" "$venv/bin/pip" install "$root[demo,export]"
# Run from outside the checkout so that the installed package, not the source
# folder, is imported; fail if the native library did not load.
cd "$(mktemp -d)"
TRANSLUTION_EXT_REQUIRE_NATIVE=1 TRANSLUTION_EXT_MIN_TESTS="${TRANSLUTION_EXT_MIN_TESTS:-900}" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/tests" "$@"
