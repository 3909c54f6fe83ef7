"""Benchmark of relative_offset_projection against the reference approach and a GEMM roofline.

Useful FLOPs of one pass: 2·B·Nq·Nk·C·D (every pair projected once); the
backward does twice that (grad_x and grad_weight).  Baselines, measured in the
same run:
  reference  the authors' approach: gather weight[index] into (Nq, Nk, C, D),
             then a broadcast matmul (memory-bound; measured on the first
             query rows that fit --ref-mem-gb, rates are per useful FLOP)
  gemm       plain GEMMs of the same shapes and FLOPs: (B·Nq·Nk, C) @ (C, D)
             forward, and the two backward GEMMs — the roofline
  sdpa       scaled_dot_product_attention at (B, 3 heads, N, 64), for context
Every implementation runs in its own subprocess so its peak memory (CPU: peak
RSS growth; CUDA: max_memory_allocated) is its own.

    python bench/relproj.py                       # CPU, fp32, batch 8
    python bench/relproj.py --device cuda --dtype bfloat16   # batch 64
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

CASES = {
    "1d_n256": ("1d", 256),
    "2d_14x14_cls": ("2d_cls", (14, 14)),
}
IMPLS = ("ours", "reference", "gemm", "sdpa")


def make_index(case: str) -> torch.Tensor:
    from translution_ext import indexing

    layout, size = CASES[case]
    ix = indexing.offset_index_1d(size) if layout == "1d" else indexing.offset_index_2d_cls(size)
    return ix.key, ix.num_classes


def worker(args) -> dict:
    """Measures one implementation on one case; prints a JSON line."""
    from translution_ext.ops import relative_offset_projection
    from translution_ext.ops.relative_offset_projection import relative_offset_projection_gathered

    torch.manual_seed(0)
    dev, dtype = args.device, getattr(torch, args.dtype)
    index, R = make_index(args.case)
    index = index.to(dev)
    N, B, C, D = index.shape[0], args.batch, args.dim, args.dim
    rows = N  # query rows computed
    if args.impl == "reference":
        per_row = N * C * D * torch.finfo(dtype).bits // 8 * 3  # gathered weights, their grad, a copy
        rows = max(1, min(N, int(args.ref_mem_gb * 2**30 // per_row)))
        index = index[:rows]
    x = torch.randn(B, N, C, device=dev, dtype=dtype, requires_grad=True)
    w = (torch.randn(R, C, D, device=dev, dtype=dtype) / C**0.5).requires_grad_()
    grad = torch.randn(B, rows, N, D, device=dev, dtype=dtype)
    flops_fwd = 2 * B * rows * N * C * D

    if args.impl in ("ours", "reference"):
        op = relative_offset_projection if args.impl == "ours" else relative_offset_projection_gathered
        fwd = lambda: op(x, w, index, "key")
        def both():
            op(x, w, index, "key").backward(grad)
    elif args.impl == "gemm":
        a = torch.randn(B * rows * N, C, device=dev, dtype=dtype)
        b = torch.randn(C, D, device=dev, dtype=dtype)
        g2 = grad.reshape(-1, D)
        fwd = lambda: a @ b
        def both():
            a @ b
            g2 @ b.t()
            a.t() @ g2
    else:  # sdpa: 3 heads of 64, the attention a Translution layer replaces
        q, k, v = (torch.randn(B, 3, N, 64, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
        go = torch.randn(B, 3, N, 64, device=dev, dtype=dtype)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        fwd = lambda: sdpa(q, k, v)
        def both():
            sdpa(q, k, v).backward(go)

    memory = PeakMemory(dev)
    t_fwd = timed(fwd, dev, args.repeat)
    t_both = timed(both, dev, args.repeat)
    return {
        "case": args.case, "impl": args.impl, "rows_measured": rows, "rows_total": N,
        "fwd_s": t_fwd, "bwd_s": max(t_both - t_fwd, 0.0), "fwd_bwd_s": t_both,
        "useful_gflops_fwd": flops_fwd / t_fwd / 1e9, "useful_gflops_fwd_bwd": 3 * flops_fwd / t_both / 1e9,
        "peak_extra_mem_mb": memory.extra_mb(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, CASES)
    p.add_argument("--dim", type=int, default=192, help="C = D")
    p.add_argument("--ref-mem-gb", type=float, default=2.0)
    args = parse_common_args(p)
    if args.impl:
        print(json.dumps(worker(args)))
        return

    results = []
    for case in args.cases:
        for impl in IMPLS:
            results.append(run_worker(__file__, [
                "--impl", impl, "--case", case, "--device", args.device, "--dtype", args.dtype,
                "--batch", str(args.batch), "--dim", str(args.dim), "--repeat", str(args.repeat),
                "--ref-mem-gb", str(args.ref_mem_gb)]))

    print(f"relative_offset_projection, {args.device} ({device_name(args.device)}), {args.dtype}, "
          f"B={args.batch}, C=D={args.dim}")
    header = f"{'case':14} {'impl':10} {'fwd ms':>9} {'bwd ms':>9} {'f+b ms':>9} {'GFLOP/s f+b':>12} " \
             f"{'vs gemm':>8} {'vs ref':>8} {'peak MB':>9}"
    print(header)
    for case in args.cases:
        by_impl = {r["impl"]: r for r in results if r["case"] == case}
        for impl in IMPLS:
            r = by_impl[impl]
            if impl != "sdpa":
                r["ratio_to_gemm_fwd_bwd"] = r["useful_gflops_fwd_bwd"] / by_impl["gemm"]["useful_gflops_fwd_bwd"]
                r["ratio_to_gemm_fwd"] = r["useful_gflops_fwd"] / by_impl["gemm"]["useful_gflops_fwd"]
                r["speedup_vs_reference_fwd_bwd"] = (
                    r["useful_gflops_fwd_bwd"] / by_impl["reference"]["useful_gflops_fwd_bwd"]
                )
            rows = "" if r["rows_measured"] == r["rows_total"] else f" ({r['rows_measured']}/{r['rows_total']} rows)"
            gf = "-" if impl == "sdpa" else f"{r['useful_gflops_fwd_bwd']:.1f}"
            vs_gemm = "-" if impl == "sdpa" else f"{r['ratio_to_gemm_fwd_bwd']:.2f}"
            vs_ref = "-" if impl == "sdpa" else f"{r['speedup_vs_reference_fwd_bwd']:.1f}x"
            print(f"{case:14} {impl:10} {r['fwd_s']*1e3:9.2f} {r['bwd_s']*1e3:9.2f} {r['fwd_bwd_s']*1e3:9.2f} "
                  f"{gf:>12} {vs_gemm:>8} {vs_ref:>8} {r['peak_extra_mem_mb']:9.1f}{rows}")
        ours, sdpa = by_impl["ours"], by_impl["sdpa"]
        print(f"{'':14} ours / sdpa fwd+bwd time: {ours['fwd_bwd_s'] / sdpa['fwd_bwd_s']:.1f}x")

    out = write_results("relproj", args.device, args.dtype, {
        "batch": args.batch, "C": args.dim, "D": args.dim,
        "flops_formula": "fwd 2*B*Nq*Nk*C*D; fwd+bwd 3x that"}, results, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
