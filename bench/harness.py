"""What the benchmark scripts share: timing, peak memory, one subprocess per measurement, results files."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from typing import List

import torch

from translution_ext.profiler.measure import (PeakMemory, WorkerError, device_name, run_json_worker,  # noqa: F401
                                              timed)

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def run_worker(script: str, args: List[str]) -> dict:
    """Runs ``script --worker ...`` in a fresh process (its own peak memory) and returns its JSON line."""
    try:
        return run_json_worker([sys.executable, os.path.abspath(script), *args])
    except WorkerError as e:
        raise SystemExit(f"{' '.join(args)} failed:\n{e.stderr}") from None


def write_results(name: str, device: str, dtype: str, meta: dict, results: list, out: str = None) -> str:
    """Writes bench/results/<name>_<device>_<dtype>.json with the environment; returns the path."""
    import translution_ext

    out = out or os.path.join(RESULTS_DIR, f"{name}_{device}_{dtype}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    meta = {
        "benchmark": name, "device": device_name(device), "device_type": device, "dtype": dtype,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "translution_ext": translution_ext.build_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **meta,
    }
    with open(out, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    return out


def add_common_args(parser, cases) -> None:
    """Options every benchmark script takes, and the hidden ones of its worker processes."""
    import argparse

    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, help="float32 on CPU, bfloat16 on CUDA by default")
    parser.add_argument("--batch", type=int, default=None, help="8 on CPU, 64 on CUDA by default")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", nargs="*", default=list(cases))
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/<name>_<device>_<dtype>.json)")
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)


def parse_common_args(parser):
    """Parses and fills the device-dependent defaults (fp32 and batch 8 on CPU, bf16 and 64 on CUDA)."""
    args = parser.parse_args()
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    args.batch = args.batch or (8 if args.device == "cpu" else 64)
    return args
