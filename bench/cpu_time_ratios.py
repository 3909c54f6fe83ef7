"""Same-process CPU-time ratios on one thread: an op against the GEMM roofline and SDPA.

For a machine shared with other jobs, where wall-clock timings of multi-threaded runs swing
by several times: each implementation runs on one thread and is timed by that thread's CPU
time (time.thread_time), interleaved with the others in rounds, best of all rounds.  Uses
the workloads of ``python -m translution_ext bench`` (translution_ext.profiler.cases).

    python bench/cpu_time_ratios.py acmix --lengths 14 28 --dim 256 --heads 4
    python bench/cpu_time_ratios.py translution --lengths 7 14 --layout 2d_cls
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import write_results  # noqa: E402

from translution_ext.profiler.cases import OPS, Setting  # noqa: E402


def cpu_time(step, calls: int) -> float:
    """Best thread CPU time in seconds of ``calls`` calls."""
    best = float("inf")
    for _ in range(calls):
        start = time.thread_time()
        step()
        best = min(best, time.thread_time() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("op", choices=("acmix", "translution"))
    p.add_argument("--lengths", type=int, nargs="+", required=True)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--layout", default="1d")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    impls = ("ours", "gemm", "sdpa") if args.op == "acmix" else ("ours", "gemm")
    results = []
    print(f"{args.op} fwd+bwd, 1 thread, CPU time, B={args.batch}, C={args.dim}, {args.heads} heads")
    for length in args.lengths:
        work = {impl: OPS[args.op][0](Setting(args.op, impl, length, batch=args.batch, dim=args.dim,
                                              heads=args.heads, layout=args.layout)) for impl in impls}
        for w in work.values():
            w.step()  # warm-up
        best = {impl: min(cpu_time(w.step, 2) for _ in range(args.rounds)) * w.scale for impl, w in work.items()}
        row = dict(length=length, **{f"{impl}_s": t for impl, t in best.items()},
                   useful_gflops=work["ours"].flops / best["ours"] / 1e9, of_gemm=best["gemm"] / best["ours"])
        line = (f"{length}: ours {best['ours'] * 1e3:.1f} ms, {row['useful_gflops']:.1f} useful GFLOP/s, "
                f"{row['of_gemm']:.2f} of the GEMM roofline")
        if "sdpa" in best:
            row["sdpa_over_ours"] = best["sdpa"] / best["ours"]
            line += f"; SDPA over all tokens {best['sdpa'] * 1e3:.1f} ms ({row['sdpa_over_ours']:.2f}x ours)"
        print(line, flush=True)
        results.append(row)
    out = write_results(f"{args.op}_cpu_time_1thread", "cpu", "float32",
                        dict(batch=args.batch, dim=args.dim, heads=args.heads, layout=args.layout), results, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
