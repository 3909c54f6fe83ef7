"""Benchmark of a Translution QKV block (forward + backward) against the reference approach.

Implementations, each in its own process (its own peak memory), same run:
  ours       translution_ext.nn.Translution (relative-offset projection kernels)
  reference  the reference code's approach re-implemented faithfully: gather
             table[index] into (rows, N, C, D) weights per role, project with
             the same broadcast matmul as the reference code (which copies the
             gathered weights once per batch element), materialise the
             (B, rows, N, D) q/k/v tensors, elementwise scores and weighted
             sum; autograd for the backward
  reference_einsum  the same approach with the projection as an einsum, which
             avoids the per-batch copies: a stronger baseline than the code
  gemm       plain GEMMs with the projections' FLOPs (3 roles x 2·B·N²·C·D
             forward, twice that backward): the roofline of any exact method
  attention  an ordinary attention block of the same width (SDPA), for context

Every tensor of the reference that is large is per query row, so on a grid
where it does not fit in memory it runs on the first query rows only (exact
for those rows: softmax is per row).  It is measured at two row counts and its
time and peak memory are extrapolated linearly to all rows; the fitted and
the measured points are reported.  A smaller grid where it fits whole is
measured directly.

    python bench/translution_layer.py                 # CPU, fp32, batch 8
    python bench/translution_layer.py --device cuda   # bf16, batch 64
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (PeakMemory, add_common_args, device_name, parse_common_args, run_worker, timed,
                     write_results)  # noqa: E402
from translution_ext.profiler.baselines import project_einsum, project_matmul, reference_translution  # noqa: E402

CASES = {"vit_tiny_14x14_cls": (14, 14), "grid_7x7_cls": (7, 7)}
IMPLS = ("ours", "reference", "reference_einsum", "gemm", "attention")
REFERENCES = ("reference", "reference_einsum")
DIM, HEADS, DIM_HEAD = 192, 3, 64


def worker(args) -> dict:
    from translution_ext.nn import Attention, Translution

    torch.manual_seed(0)
    dev, dtype = args.device, getattr(torch, args.dtype)
    grid = CASES[args.case]
    n = grid[0] * grid[1] + 1
    rows = min(args.rows or n, n)
    b = args.batch
    x = torch.randn(b, n, DIM, device=dev, dtype=dtype, requires_grad=True)
    if args.impl == "ours" or args.impl in REFERENCES:
        block = Translution(DIM, HEADS, DIM_HEAD, layout="2d_cls", grid=grid).to(dev, dtype)
        out_rows = n if args.impl == "ours" else rows
        g = torch.randn(b, out_rows, DIM, device=dev, dtype=dtype)
        project = project_matmul if args.impl == "reference" else project_einsum
        run = (lambda: block(x)) if args.impl == "ours" else (lambda: reference_translution(block, x, rows, project))
    elif args.impl == "attention":
        block = Attention(DIM, HEADS, DIM_HEAD).to(dev, dtype)
        g = torch.randn(b, n, DIM, device=dev, dtype=dtype)
        run = lambda: block(x)  # noqa: E731
    else:  # gemm: (B·N·N, C) @ (C, D) three times, and the two backward GEMMs of each
        a = torch.randn(b * n * n, DIM, device=dev, dtype=dtype)
        w = torch.randn(DIM, HEADS * DIM_HEAD, device=dev, dtype=dtype)
        go = torch.randn(b * n * n, HEADS * DIM_HEAD, device=dev, dtype=dtype)

        def run_gemm(backward: bool):
            for _ in range(3):
                a @ w
                if backward:
                    go @ w.t()
                    a.t() @ go
        memory = PeakMemory(dev)
        t_fwd = timed(lambda: run_gemm(False), dev, args.repeat)
        t_both = timed(lambda: run_gemm(True), dev, args.repeat)
        return dict(case=args.case, impl="gemm", rows=n, n=n, fwd_s=t_fwd, fwd_bwd_s=t_both,
                    peak_extra_mem_mb=memory.extra_mb())

    def both():
        run().backward(g)
        x.grad = None
        block.zero_grad(set_to_none=True)

    memory = PeakMemory(dev)
    with torch.no_grad():
        t_fwd = timed(run, dev, args.repeat)
    t_both = timed(both, dev, args.repeat)
    return dict(case=args.case, impl=args.impl, rows=rows, n=n, fwd_s=t_fwd, fwd_bwd_s=t_both,
                peak_extra_mem_mb=memory.extra_mb())


def measure_reference(script_args, impl: str, case: str, n: int, rows_budget: int) -> dict:
    """A reference at all rows when they fit, else at two row counts extrapolated to n rows."""
    if rows_budget >= n:
        r = run_worker(__file__, script_args + ["--impl", impl, "--case", case, "--rows", str(n)])
        r["extrapolated"] = False
        return r
    lo_rows, hi_rows = max(1, rows_budget // 2), rows_budget
    lo = run_worker(__file__, script_args + ["--impl", impl, "--case", case, "--rows", str(lo_rows)])
    hi = run_worker(__file__, script_args + ["--impl", impl, "--case", case, "--rows", str(hi_rows)])

    def linear(key):
        slope = (hi[key] - lo[key]) / (hi_rows - lo_rows)
        return hi[key] + slope * (n - hi_rows)

    return dict(case=case, impl=impl, rows=n, n=n, extrapolated=True,
                measured=[lo, hi], fwd_s=linear("fwd_s"), fwd_bwd_s=linear("fwd_bwd_s"),
                peak_extra_mem_mb=linear("peak_extra_mem_mb"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, CASES)
    p.add_argument("--ref-mem-gb", type=float, default=6.0,
                   help="memory a reference may use; above it, it runs on fewer query rows")
    p.add_argument("--rows", type=int, default=None, help=argparse.SUPPRESS)
    args = parse_common_args(p)
    if args.impl:
        print(json.dumps(worker(args)))
        return

    common = ["--device", args.device, "--dtype", args.dtype, "--batch", str(args.batch),
              "--repeat", str(args.repeat)]
    itemsize = torch.finfo(getattr(torch, args.dtype)).bits // 8
    results = []
    print(f"Translution QKV block fwd+bwd, {args.device} ({device_name(args.device)}), {args.dtype}, "
          f"B={args.batch}, dim={DIM}, heads={HEADS}x{DIM_HEAD}")
    print(f"{'case':20} {'impl':16} {'fwd ms':>10} {'f+b ms':>10} {'peak MB':>10}  notes")
    for case in args.cases:
        n = CASES[case][0] * CASES[case][1] + 1
        # Per query row the einsum reference holds 3 gathered weights, their grads and a
        # transient copy; the matmul one also copies the weights once per batch element.
        per_row = 7 * n * DIM * HEADS * DIM_HEAD * itemsize
        by_impl = {}
        for impl in IMPLS:
            if impl in REFERENCES:
                row_bytes = per_row * (1 + args.batch if impl == "reference" else 1)
                rows_budget = max(2, int(args.ref_mem_gb * 2**30 // row_bytes))
                r = measure_reference(common, impl, case, n, rows_budget)
            else:
                r = run_worker(__file__, common + ["--impl", impl, "--case", case])
            by_impl[impl] = r
            results.append(r)
        flops = 3 * 2 * args.batch * n * n * DIM * HEADS * DIM_HEAD
        ours, ref, ref_einsum, gemm, attn = (by_impl[i] for i in IMPLS)
        summary = dict(
            case=case, impl="summary", speedup_vs_reference_fwd_bwd=ref["fwd_bwd_s"] / ours["fwd_bwd_s"],
            memory_ratio_reference_to_ours=ref["peak_extra_mem_mb"] / ours["peak_extra_mem_mb"],
            speedup_vs_reference_einsum_fwd_bwd=ref_einsum["fwd_bwd_s"] / ours["fwd_bwd_s"],
            memory_ratio_reference_einsum_to_ours=ref_einsum["peak_extra_mem_mb"] / ours["peak_extra_mem_mb"],
            ours_fraction_of_gemm_roofline_fwd_bwd=gemm["fwd_bwd_s"] / ours["fwd_bwd_s"],
            ours_vs_attention_time=ours["fwd_bwd_s"] / attn["fwd_bwd_s"],
            ours_projection_gflops_fwd_bwd=3 * flops / ours["fwd_bwd_s"] / 1e9)
        results.append(summary)
        for impl in IMPLS:
            r = by_impl[impl]
            note = ""
            if r.get("extrapolated"):
                pts = ", ".join(f"{m['rows']} rows: {m['fwd_bwd_s']*1e3:.0f} ms/{m['peak_extra_mem_mb']:.0f} MB"
                                for m in r["measured"])
                note = f"extrapolated to {n} rows from {pts}"
            print(f"{case:20} {impl:16} {r['fwd_s']*1e3:10.1f} {r['fwd_bwd_s']*1e3:10.1f} "
                  f"{r['peak_extra_mem_mb']:10.1f}  {note}")
        print(f"{'':20} ours vs reference: {summary['speedup_vs_reference_fwd_bwd']:.1f}x faster, "
              f"{summary['memory_ratio_reference_to_ours']:.1f}x less peak memory; vs reference_einsum: "
              f"{summary['speedup_vs_reference_einsum_fwd_bwd']:.1f}x faster, "
              f"{summary['memory_ratio_reference_einsum_to_ours']:.1f}x less peak memory; "
              f"{summary['ours_fraction_of_gemm_roofline_fwd_bwd']:.2f} of the GEMM roofline; "
              f"{summary['ours_vs_attention_time']:.1f}x the time of SDPA attention")
    out = write_results("translution_layer", args.device, args.dtype, {
        "batch": args.batch, "dim": DIM, "heads": HEADS, "dim_head": DIM_HEAD, "relative": "qkv",
        "ref_mem_gb": args.ref_mem_gb}, results, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
