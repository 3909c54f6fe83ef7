"""TRANSLUTION_EXT_SHARD (tests/conftest.py, scripts/run_shards.sh): the shards of a selection
split it exactly, and a malformed value is a clear error."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TARGET = str(HERE / "test_package.py")


def _collect(shard: str | None) -> subprocess.CompletedProcess:
    # Run from an empty folder, as the suite itself runs: from the checkout, Python would import
    # the source folder's translution_ext instead of the installed one.
    unset = ("TRANSLUTION_EXT_SHARD", "TRANSLUTION_EXT_MIN_TESTS", "CI")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    if shard is not None:
        env["TRANSLUTION_EXT_SHARD"] = shard
    with tempfile.TemporaryDirectory() as empty:
        return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", TARGET],
                              capture_output=True, text=True, env=env, cwd=empty)


def _ids(run: subprocess.CompletedProcess) -> list[str]:
    assert run.returncode == 0, run.stdout + run.stderr
    return [line for line in run.stdout.splitlines() if "::" in line]


def test_shards_split_the_selection_exactly():
    whole = _ids(_collect(None))
    parts = [_ids(_collect(f"{i}/3")) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(whole)
    assert sum(len(p) for p in parts) == len(whole)


@pytest.mark.parametrize("shard", ["3/3", "-1/2", "a/b", "1"])
def test_malformed_shard_is_a_clear_error(shard):
    run = _collect(shard)
    assert run.returncode != 0
    assert f"TRANSLUTION_EXT_SHARD must be i/n with 0 <= i < n, got '{shard}'" in run.stdout + run.stderr
