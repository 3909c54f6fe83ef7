"""Benchmark of the fused Translution attention: memory scaling, speed, largest trainable ViT.

1. memory: peak memory of one forward+backward of a Translution QKV block (1D, C = D = 192,
   3 heads) for N in 64..1024, fused path vs the projection-op path (which stores the
   (B, N, N, D) q/k/v); the exponent of a power-law fit says how each grows.
2. speed: fused vs projection-op path vs the reference approach (gathered weights, einsum
   form, on query rows that fit, extrapolated as in translution_layer.py), as useful GFLOP/s
   and as a fraction of the same-run GEMM throughput.  Useful FLOPs of one forward:
       2·B·N²·C·D per relative role  +  2·B·N²·D (scores)  +  2·B·N²·D (weighted sum)
   and forward+backward counts 3x that.  The GEMM is (B·N², C) @ (C, D) with its two
   backward GEMMs, at the same shapes as the projections.
3. capacity: for ViT tiny..large (224/16, every block Translution QKV), the training-step
   memory at batch 32 with each path, from the measured bytes autograd saves per block and
   sample, plus parameters, gradients and Adam moments (16 bytes per parameter).

    python bench/translution_attention.py            # CPU: memory B=1, speed B=8 on ViT-tiny
    python bench/translution_attention.py --device cuda --batch 32   # ViT-B/16 geometry on a GPU
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (PeakMemory, add_common_args, device_name, parse_common_args, run_worker, timed,  # noqa: E402
                     write_results)
from translution_ext.profiler.baselines import project_einsum, reference_translution  # noqa: E402

MEMORY_LENGTHS = (64, 128, 256, 512, 1024)
SPEED_CASES = {"vit_tiny": dict(grid=(14, 14), dim=192, heads=3), "vit_base": dict(grid=(14, 14), dim=768, heads=12)}
DIM_HEAD = 64
CASES = ("memory", "speed", "capacity")


def block_for(layout: str, size, dim: int, heads: int, backend: str):
    from translution_ext.nn import Translution

    where = dict(grid=size) if layout.startswith("2d") else dict(max_len=size)
    return Translution(dim, heads, dim // heads, layout=layout, backend=backend, **where)


def useful_flops(b: int, n: int, c: int, d: int) -> int:
    return 2 * b * n * n * (3 * c * d + 2 * d)


def worker(args) -> dict:
    torch.manual_seed(0)
    dev, dtype = args.device, getattr(torch, args.dtype)
    spec = json.loads(args.spec)
    layout, size, dim, heads = spec["layout"], spec["size"], spec["dim"], spec["heads"]
    size = tuple(size) if isinstance(size, list) else size
    backend = {"fused": "fused", "projection": "native"}.get(args.impl, "native")
    block = block_for(layout, size, dim, heads, backend).to(dev, dtype)
    n = block.layout.max_tokens
    b = args.batch
    x = torch.randn(b, n, dim, device=dev, dtype=dtype, requires_grad=True)
    if args.impl == "gemm":
        a = torch.randn(b * n * n, dim, device=dev, dtype=dtype)
        w = torch.randn(dim, dim, device=dev, dtype=dtype)
        go = torch.randn(b * n * n, dim, device=dev, dtype=dtype)
        t = timed(lambda: (a @ w, go @ w.t(), a.t() @ go), dev, args.repeat)
        return dict(impl="gemm", n=n, fwd_bwd_s=t, gflops=3 * 2 * b * n * n * dim * dim / t / 1e9)
    rows = min(args.rows or n, n)
    g = torch.randn(b, rows, dim, device=dev, dtype=dtype)
    run = (lambda: block(x)) if args.impl != "reference" else (lambda: reference_translution(block, x, rows, project_einsum))

    def step():
        run().backward(g)
        x.grad = None
        block.zero_grad(set_to_none=True)

    memory = PeakMemory(dev)
    t = timed(step, dev, args.repeat)
    return dict(impl=args.impl, n=n, rows=rows, fwd_bwd_s=t, peak_extra_mem_mb=memory.extra_mb())


def saved_bytes_per_sample(backend: str, dim: int, heads: int, grid) -> int:
    """Bytes autograd keeps for one sample through one Translution block + feed-forward (no parameters)."""
    from translution_ext.models.blocks import Block, FeedForward

    block = Block(block_for("2d_cls", grid, dim, heads, backend), FeedForward(dim, 4 * dim))
    x = torch.randn(1, grid[0] * grid[1] + 1, dim, requires_grad=True)
    storages = {}

    def pack(t):
        if t.is_floating_point() and not isinstance(t, torch.nn.Parameter):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    return sum(storages.values())


def capacity(batch: int = 32, budget_gb: float = 80.0) -> list:
    """Training-step memory of ViT 224/16 configs; activations measured at tiny width, linear in width."""
    from translution_ext.models import config

    grid = (14, 14)
    r = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
    # Every saved activation is linear in the width at a fixed token count and head size
    # (x, q/k/v per pair, attention weights: heads = width / 64), so tiny's bytes scale.
    tiny = {b: saved_bytes_per_sample(b, 192, 3, grid) for b in ("fused", "native")}
    rows = []
    for name in ("tiny", "small", "base", "large"):
        cfg = config(name)
        inner = cfg["heads"] * DIM_HEAD
        per_block = 3 * r * cfg["dim"] * inner + inner * cfg["dim"] + 2 * cfg["dim"] * cfg["mlp_dim"]
        params = cfg["depth"] * per_block
        row = dict(config=name, params=params, param_state_gb=16 * params / 1e9)
        for path, backend in (("fused", "fused"), ("projection", "native")):
            per_sample = tiny[backend] * cfg["dim"] / 192
            row[f"{path}_activation_bytes_per_sample_per_block"] = per_sample
            row[f"{path}_activations_gb"] = per_sample * batch * cfg["depth"] / 1e9
            row[f"{path}_total_gb"] = row[f"{path}_activations_gb"] + row["param_state_gb"]
            row[f"{path}_fits"] = row[f"{path}_total_gb"] <= budget_gb
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, CASES)
    p.add_argument("--ref-mem-gb", type=float, default=4.0)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, default=None, help=argparse.SUPPRESS)
    args = parse_common_args(p)
    if args.impl:
        print(json.dumps(worker(args)))
        return
    common = ["--device", args.device, "--dtype", args.dtype, "--repeat", str(args.repeat)]
    results = []
    print(f"fused Translution attention, {args.device} ({device_name(args.device)}), {args.dtype}")

    if "memory" in args.cases:
        print("\nmemory: peak extra MB of one forward+backward, 1D QKV block, C = D = 192, 3 heads, B = 1")
        print(f"{'N':>6} {'fused MB':>10} {'projection MB':>14}")
        mem = {"fused": [], "projection": []}
        for n in MEMORY_LENGTHS:
            spec = json.dumps(dict(layout="1d", size=n, dim=192, heads=3))
            line = []
            for impl in mem:
                r = run_worker(__file__, common[:4] + ["--batch", "1", "--repeat", "1", "--impl", impl,
                                                       "--case", "memory", "--spec", spec])
                mem[impl].append(r["peak_extra_mem_mb"])
                results.append(dict(case="memory", **r))
                line.append(r["peak_extra_mem_mb"])
            print(f"{n:>6} {line[0]:>10.1f} {line[1]:>14.1f}")
        for impl, values in mem.items():
            xs = [math.log(n) for n in MEMORY_LENGTHS]
            ys = [math.log(max(v, 1e-3)) for v in values]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)
            # The last doubling shows the growth once fixed costs (libraries, parameter grads) fade.
            last = math.log(values[-1] / values[-2]) / math.log(MEMORY_LENGTHS[-1] / MEMORY_LENGTHS[-2])
            results.append(dict(case="memory_fit", impl=impl, exponent=slope, exponent_last_doubling=last))
            print(f"{impl}: peak memory ~ N^{slope:.2f} over all N, N^{last:.2f} over the last doubling")

    if "speed" in args.cases:
        name = "vit_tiny" if args.device == "cpu" else "vit_base"
        geo = SPEED_CASES[name]
        spec = json.dumps(dict(layout="2d_cls", size=geo["grid"], dim=geo["dim"], heads=geo["heads"]))
        n = geo["grid"][0] * geo["grid"][1] + 1
        flops = 3 * useful_flops(args.batch, n, geo["dim"], geo["dim"])
        batch = ["--batch", str(args.batch)]
        by = {}
        for impl in ("fused", "projection", "gemm"):
            by[impl] = run_worker(__file__, common + batch + ["--impl", impl, "--case", "speed", "--spec", spec])
        per_row = 7 * n * geo["dim"] ** 2 * torch.finfo(getattr(torch, args.dtype)).bits // 8
        rows = max(2, int(args.ref_mem_gb * 2**30 // per_row))
        lo = run_worker(__file__, common + batch + ["--impl", "reference", "--case", "speed", "--spec", spec,
                                                    "--rows", str(max(1, rows // 2))])
        hi = run_worker(__file__, common + batch + ["--impl", "reference", "--case", "speed", "--spec", spec,
                                                    "--rows", str(rows)])
        slope = (hi["fwd_bwd_s"] - lo["fwd_bwd_s"]) / (hi["rows"] - lo["rows"])
        by["reference"] = dict(impl="reference", n=n, fwd_bwd_s=hi["fwd_bwd_s"] + slope * (n - hi["rows"]),
                               extrapolated_from=[lo, hi])
        gemm = by["gemm"]["gflops"]
        print(f"\nspeed: {name} geometry (14x14 + cls, dim {geo['dim']}, {geo['heads']} heads x 64), "
              f"B = {args.batch}, forward+backward; useful FLOPs = 3 x 2*B*N^2*(3*C*D + 2*D)")
        print(f"{'impl':12} {'f+b ms':>10} {'GFLOP/s':>9} {'of GEMM':>8} {'fused is':>9}")
        for impl in ("fused", "projection", "reference", "gemm"):
            r = by[impl]
            gf = flops / r["fwd_bwd_s"] / 1e9 if impl != "gemm" else gemm
            r.update(case="speed", useful_gflops=gf, fraction_of_gemm=gf / gemm,
                     fused_speedup=r["fwd_bwd_s"] / by["fused"]["fwd_bwd_s"] if impl != "gemm" else None)
            results.append(r)
            note = " (extrapolated)" if impl == "reference" else ""
            speed = f"{r['fused_speedup']:.1f}x" if r["fused_speedup"] else "-"
            print(f"{impl:12} {r['fwd_bwd_s']*1e3:>10.1f} {gf:>9.1f} {gf / gemm:>8.2f} {speed:>9}{note}")

    if "capacity" in args.cases:
        print("\ncapacity: ViT 224/16, every block Translution QKV, batch 32, fp32 weights + grads + Adam "
              "(16 B/param), activations from measured saved bytes per block and sample")
        print(f"{'config':8} {'params':>8} {'state GB':>9} {'fused GB':>9} {'proj. GB':>9}  fits 80 GB (fused/proj.)")
        for row in capacity():
            results.append(dict(case="capacity", **row))
            print(f"{row['config']:8} {row['params']/1e9:>7.2f}B {row['param_state_gb']:>9.1f} "
                  f"{row['fused_total_gb']:>9.1f} {row['projection_total_gb']:>9.1f}  "
                  f"{row['fused_fits']}/{row['projection_fits']}")
    out = write_results("translution_attention", args.device, args.dtype, {"batch": args.batch}, results, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
