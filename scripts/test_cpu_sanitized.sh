#!/usr/bin/env bash
# Builds the CPU kernels with AddressSanitizer + UndefinedBehaviorSanitizer in a scratch copy of
# the checkout and runs the op tests on them (not gradcheck, opcheck or torch.compile, which
# repeat the same kernels many times over).  Not part of CI: the build takes ~15 min on 2 cores.
# Usage: bash scripts/test_cpu_sanitized.sh [extra pytest args]
#   PYTHON=.venv/dev/bin/python   a Python with torch, pytest, setuptools and ninja
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/dev/bin/python}"
copy="$(mktemp -d)"
git -C "$root" ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$copy")
(cd "$copy" && TRANSLUTION_EXT_SANITIZE=1 FORCE_CPU=1 MAX_JOBS="${MAX_JOBS:-2}" "$python" setup.py build_ext --inplace)
cd "$(mktemp -d)"
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  PYTHONPATH="$copy" TRANSLUTION_EXT_REQUIRE_NATIVE=1 "$python" -m pytest -q -p no:cacheprovider \
  "$copy"/tests/test_{acmix_window_attention,xvolution_deployed,pixel_shift_products,relative_offset_projection,translution_attention}.py \
  -k "not emu and not gradcheck and not opcheck and not compile" "$@"
