"""ACmix attention path, forward + backward: the native op vs the unfolded reference.

ResNet stage-3 shapes (B = 8, C = 256, 4 heads, window 7), each implementation in its own
process so that its peak memory is its own, in one run.  The reference is the spec's
literal form (unfold k, v and the position term into B·C·49·H·W tensors).  Peak memory is
the growth of the process's peak RSS (CPU) or max allocated (CUDA) after a warm-up on a
tiny input.

    python bench/acmix.py                   # CPU, fp32
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (PeakMemory, add_common_args, device_name, parse_common_args, run_worker, timed,  # noqa: E402
                     write_results)

CASES = {"c256_14x14": (256, 14), "c256_28x28": (256, 28)}
IMPLS = ("native", "reference")
HEADS, WINDOW = 4, 7


def worker(args) -> dict:
    from translution_ext.ops.acmix_window_attention import acmix_window_attention, acmix_window_attention_reference

    torch.manual_seed(0)
    dev, dtype = args.device, getattr(torch, args.dtype)
    c, hw = CASES[args.case]
    q, k, v = (torch.randn(args.batch, c, hw, hw, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
    pe = torch.randn(1, c // HEADS, hw, hw, device=dev, dtype=dtype, requires_grad=True)
    op = acmix_window_attention if args.impl == "native" else acmix_window_attention_reference
    g = torch.randn(args.batch, c, hw, hw, device=dev, dtype=dtype)

    def step():
        op(q, k, v, pe, HEADS, WINDOW, 1).backward(g)
        for t in (q, k, v, pe):
            t.grad = None

    # Run the op once on a tiny input first, so that one-time runtime set-up (thread pool,
    # allocator arenas, autograd engine) is not charged to either implementation.
    tiny = [t[:1, :, :8, :8].detach().clone().requires_grad_() for t in (q, k, v, pe)]
    op(*tiny, HEADS, WINDOW, 1).sum().backward()
    memory = PeakMemory(dev)
    with torch.no_grad():
        t_fwd = timed(lambda: op(q, k, v, pe, HEADS, WINDOW, 1), dev, args.repeat)
    t_both = timed(step, dev, args.repeat)
    return dict(case=args.case, impl=args.impl, fwd_s=t_fwd, fwd_bwd_s=t_both, peak_extra_mem_mb=memory.extra_mb())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, CASES)
    args = parse_common_args(p)
    if args.impl:
        print(json.dumps(worker(args)))
        return
    common = ["--device", args.device, "--dtype", args.dtype, "--batch", str(args.batch), "--repeat", str(args.repeat)]
    results = []
    print(f"ACmix attention path fwd+bwd, {args.device} ({device_name(args.device)}), {args.dtype}, "
          f"B={args.batch}, {HEADS} heads, window {WINDOW}")
    print(f"{'case':12} {'impl':10} {'fwd ms':>9} {'f+b ms':>9} {'peak MB':>9}")
    for case in args.cases:
        by = {impl: run_worker(__file__, common + ["--impl", impl, "--case", case]) for impl in IMPLS}
        for impl in IMPLS:
            r = by[impl]
            results.append(r)
            print(f"{case:12} {impl:10} {r['fwd_s']*1e3:9.1f} {r['fwd_bwd_s']*1e3:9.1f} {r['peak_extra_mem_mb']:9.1f}")
        speed = by["reference"]["fwd_bwd_s"] / by["native"]["fwd_bwd_s"]
        memory = by["reference"]["peak_extra_mem_mb"] / max(by["native"]["peak_extra_mem_mb"], 1e-3)
        results.append(dict(case=case, impl="summary", speedup=speed, memory_ratio=memory))
        print(f"{'':12} native vs reference: {speed:.1f}x faster, {memory:.1f}x less peak memory")
    out = write_results("acmix", args.device, args.dtype, {"batch": args.batch, "heads": HEADS, "window": WINDOW},
                        results, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
