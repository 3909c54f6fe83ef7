#!/usr/bin/env bash
# Runs a pytest suite as several processes side by side, each with its share of the tests
# (TRANSLUTION_EXT_SHARD=i/n, tests/conftest.py) and one intra-op thread; prints each one's
# output when all are done and fails when any failed.  For suites that run on one CPU thread
# (the emulated CUDA kernels) or mostly in Python.
# Usage: bash scripts/run_shards.sh PYTHON MINIMUM [VAR=value ...] -- [pytest args]
#   MINIMUM                 tests that must pass in all (each process checks its share)
#   SHARDS=$(nproc)         processes (1 to 4)
set -euo pipefail
python="$1" minimum="$2"
shift 2
env_vars=()
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do env_vars+=("$1"); shift; done
[ "${1:-}" = "--" ] || { echo "run_shards: expected -- before the pytest arguments" >&2; exit 2; }
shift
shards="${SHARDS:-$(nproc)}"
shards=$(( shards < 1 ? 1 : (shards > 4 ? 4 : shards) ))
pids=() logs=() status=0
for ((i = 0; i < shards; i++)); do
  logs+=("$(mktemp)")
  env "${env_vars[@]}" OMP_NUM_THREADS=1 TRANSLUTION_EXT_SHARD="$i/$shards" \
    TRANSLUTION_EXT_MIN_TESTS=$(( minimum / shards )) \
    "$python" -m pytest -q -p no:cacheprovider "$@" >"${logs[i]}" 2>&1 &
  pids+=($!)
done
for ((i = 0; i < shards; i++)); do
  wait "${pids[i]}" || status=1
  echo "-- tests, process $((i + 1)) of $shards"
  cat "${logs[i]}"
  rm -f "${logs[i]}"
done
exit "$status"
