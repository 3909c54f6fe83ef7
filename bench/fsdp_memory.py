"""Memory per rank of full-Translution ViTs under FSDP2, counted from the models themselves.

Every model is built on the meta device (no memory, no initialisation) and its parameters
are counted.  FSDP2 (``fully_shard``) shards each parameter along dim 0 into W chunks of
ceil(d0 / W) rows (the last chunks may be shorter; storage is padded to the chunk), so a
rank holds at most sum over parameters of ceil(d0 / W)·(the other dims).  Training with
fp32 parameters and Adam keeps per parameter: the parameter (4 B), its gradient (4 B) and
Adam's two moments (8 B) = 16 B.  While a block runs, FSDP2 all-gathers it: the unsharded
block's parameters and, in backward, its gradients (4 + 4 B per parameter in fp32, 2 + 2 B
with bf16 mixed precision) come on top; prefetching can hold the next block's parameters
too.  Activations are not counted.

    python bench/fsdp_memory.py                 # the README table; writes bench/results/fsdp_memory.{json,txt}
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import RESULTS_DIR, write_results  # noqa: E402

CONFIGS = ("tiny", "small", "base")
RANKS = (1, 2, 8)
STATE_BYTES = 4 + 4 + 8  # fp32 parameter, gradient, Adam exp_avg and exp_avg_sq
GB = 1e9


def shard_numel(shape: torch.Size, world: int) -> int:
    """Elements of the largest dim-0 shard of a parameter of ``shape`` over ``world`` ranks."""
    if len(shape) == 0:
        return 1
    return math.ceil(shape[0] / world) * math.prod(shape[1:])


def count(name: str) -> dict:
    from translution_ext.models import create_vit

    with torch.device("meta"):
        model = create_vit(name, image_size=224, patch_size=16, num_classes=1000, mixer="translution",
                           relative="qkv")
    params = list(model.parameters())
    mixer = model.blocks[0].mixer
    tables = sum(getattr(mixer, f"{r}_table").numel() for r in mixer.relative)
    block = max(sum(p.numel() for p in b.parameters()) for b in model.blocks)
    return {
        "model": f"ViT-{name}", "dim": mixer.dim, "depth": len(model.blocks), "table_rows": mixer.num_classes,
        "parameters": sum(p.numel() for p in params), "tables_per_layer": tables, "largest_block": block,
        "per_rank": {str(w): sum(shard_numel(p.shape, w) for p in params) * STATE_BYTES for w in RANKS},
        "unsharded_block_fp32": block * (4 + 4), "unsharded_block_bf16": block * (2 + 2),
    }


def table(rows) -> str:
    head = ("| model (224/16, full Translution, relative qkv) | parameters | tables per layer | "
            + " | ".join(f"{w} rank{'s' if w > 1 else ''}" for w in RANKS)
            + " | + one unsharded block (fp32 / bf16) |")
    lines = [head, "|" + "---|" * (5 + len(RANKS) - 1)]
    for r in rows:
        lines.append(f"| {r['model']} (dim {r['dim']}, depth {r['depth']}, R = {r['table_rows']}) "
                     f"| {r['parameters'] / 1e9:.2f} G | {r['tables_per_layer'] / 1e9:.3f} G | "
                     + " | ".join(f"{r['per_rank'][str(w)] / GB:.1f} GB" for w in RANKS)
                     + f" | {r['unsharded_block_fp32'] / GB:.1f} / {r['unsharded_block_bf16'] / GB:.1f} GB |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(RESULTS_DIR, "fsdp_memory.json"))
    args = p.parse_args()
    rows = [count(name) for name in CONFIGS]
    text = ("Parameters + gradients + Adam state per rank (fp32, 16 B per parameter, FSDP2 dim-0 shards); "
            "1 GB = 1e9 bytes.\n\n" + table(rows))
    print(text)
    meta = {"bytes_per_parameter": STATE_BYTES, "ranks": list(RANKS), "image_size": 224, "patch_size": 16}
    out = write_results("fsdp_memory", "cpu", "float32", meta, rows, out=args.out)
    with open(os.path.splitext(out)[0] + ".txt", "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
