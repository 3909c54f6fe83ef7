#!/usr/bin/env bash
# Configures the CMake build against the torch of a Python environment, builds
# the library and the C++ tests, and runs them with ctest.
#   PYTHON=.venv/test/bin/python (default)  BUILD_DIR=build/cmake
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/test/bin/python}"
build="${BUILD_DIR:-$root/build/cmake}"
bin="$(dirname "$python")"
command -v cmake >/dev/null || "$bin/pip" install --quiet cmake
"$bin/pip" install --quiet ninja
export PATH="$bin:$PATH"
cmake -S "$root" -B "$build" -G Ninja -DPython3_EXECUTABLE="$python"
cmake --build "$build" -j "${MAX_JOBS:-2}"
ctest --test-dir "$build" --output-on-failure --no-tests=error
