#!/usr/bin/env bash
# Runs the CUDA kernels without a GPU: builds the CUDA emulation library (the .cu kernel sources
# compiled as host C++ against the test-only emulator in tests/cuda_emulator) and its
# AddressSanitizer + UndefinedBehaviorSanitizer build, then runs the emulated tests: every
# device-parametrised op test on the emulated CUDA kernels, the emulator's own tests (broken
# kernels it must report, schedules, launch counts), once with each build.
# The emulator runs a kernel on one CPU thread, so each suite runs as SHARDS pytest processes
# side by side (scripts/run_shards.sh).
# Usage: bash scripts/test_cuda_emulated.sh [--build-only] [extra pytest args]
#   --build-only             build the (non-sanitizer) library only; its path is the last line printed
#   VENV=.venv/test          the environment (created like scripts/test.sh when missing)
#   TORCH_SPEC=torch==2.13.0 the torch to install first
#   SHARDS=$(nproc)          processes per suite (1 to 4)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$root/.venv/test}"
build_only=0
if [ "${1:-}" = "--build-only" ]; then build_only=1; shift; fi

if ! "$venv/bin/python" -c "import translution_ext, pytest" >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet "${TORCH_SPEC:-torch==2.13.0}" numpy pytest
  MAX_JOBS="${MAX_JOBS:-2}" "$venv/bin/pip" install --quiet "$root[demo]"
fi
"$venv/bin/pip" install --quiet cmake ninja
export PATH="$venv/bin:$PATH"
libdir="$venv/lib/translution_ext_emu"

build() {  # build <dir> <sanitize ON|OFF>
  cmake -S "$root/tests/cuda_emulator" -B "$1" -G Ninja -DPython3_EXECUTABLE="$venv/bin/python" \
    -DCUDA_EMULATOR_SANITIZE="$2" >/dev/null
  cmake --build "$1" -j "${MAX_JOBS:-2}" >&2
}

build "$libdir/plain" OFF
plain="$libdir/plain/libtranslution_ext_emu.so"
if [ "$build_only" = 1 ]; then
  echo "$plain"
  exit 0
fi
build "$libdir/sanitized" ON
sanitized="$libdir/sanitized/libtranslution_ext_emu.so"

# Run from outside the checkout so that the installed package is imported.
cd "$(mktemp -d)"
tests=(-k "emu or cuda_emulator" "$root/tests")
echo "== emulated CUDA kernels (schedule random:1)"
bash "$root/scripts/run_shards.sh" "$venv/bin/python" "${TRANSLUTION_EXT_MIN_TESTS:-180}" CUDA_EMULATOR_LIBRARY="$plain" \
  CUDA_EMULATOR_SANITIZED_LIBRARY="$sanitized" CUDA_EMULATOR_SCHEDULE=random:1 TRANSLUTION_EXT_REQUIRE_NATIVE=1 \
  -- "${tests[@]}" "$@"
# The sanitizer run leaves out what only repeats the same kernels on the same shapes many times
# over (gradcheck, opcheck, torch.compile), the largest grid and the full-size launch counts: 10-20x
# slower under the sanitizers.
sanitized_tests=(-k "(emu or cuda_emulator) and not gradcheck and not opcheck and not compile and not 65535 and not launch_counts\["
                 "$root/tests")
echo "== emulated CUDA kernels under AddressSanitizer + UndefinedBehaviorSanitizer"
bash "$root/scripts/run_shards.sh" "$venv/bin/python" "${TRANSLUTION_EXT_MIN_TESTS:-150}" \
  LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  CUDA_EMULATOR_LIBRARY="$sanitized" TRANSLUTION_EXT_REQUIRE_NATIVE=1 -- "${sanitized_tests[@]}" "$@"
