"""Timing and peak-memory measurement shared by the bench CLI, the demo and bench/ scripts."""
from __future__ import annotations

import json
import platform
import resource
import subprocess
import time
from typing import Callable, List

import torch


def synchronize(device: str) -> None:
    """Waits for queued CUDA work, so that timings cover it; nothing on CPU."""
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, repeat: int) -> float:
    """Best wall time in seconds of ``repeat`` calls after one warm-up call."""
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


class PeakMemory:
    """Peak memory growth from construction: CUDA max_memory_allocated, CPU peak RSS.

    The CPU figure is the process's peak resident set, which never goes down, so each
    measurement needs its own process (the bench CLI and bench/ scripts run workers).
    """

    def __init__(self, device: str):
        self.device = device
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self._rss()

    @staticmethod
    def _rss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def extra_mb(self) -> float:
        """Peak memory above the level at construction, in MiB."""
        peak = torch.cuda.max_memory_allocated() if self.device == "cuda" else self._rss()
        return (peak - self.base) / 2**20


def device_name(device: str) -> str:
    """The GPU's name, or the CPU model and the number of threads torch uses."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} threads"


class WorkerError(RuntimeError):
    """A measurement process failed; ``stderr`` holds what it printed."""

    def __init__(self, cmd: List[str], returncode: int, stderr: str):
        lines = stderr.strip().splitlines()
        super().__init__(lines[-1] if lines else f"exit status {returncode}")
        self.cmd, self.returncode, self.stderr = cmd, returncode, stderr


def run_json_worker(cmd: List[str]) -> dict:
    """Runs ``cmd`` in a fresh process, so that its peak memory is its own, and returns the
    JSON object on the last line it prints.  Raises WorkerError when it fails."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise WorkerError(cmd, done.returncode, done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])
