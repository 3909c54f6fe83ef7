"""Performance model of the fused Translution attention's CUDA kernels (a prediction, not a measurement).

For a Translution QKV layer (q, k and v all relative, one source x of width C, tables
(R, C, H·d)) it rebuilds the kernels' work lists from the index maps exactly as the plan does
(pairs grouped by offset class, cut at 16-row query/key tiles; chunks of at most 64 rows =
pairs x batch items of one batch tile of 4), and counts per kernel:
  - useful FLOPs: the projections of every pair (2·C·d per pair, head and role), scores and
    weighted sum; the backward's own GEMMs (one per role for the source and one for the table);
  - executed FLOPs: what the 64x64-tile GEMMs compute, padding rows and columns included,
    recomputation (flash-style backward) included;
  - HBM bytes: table slices streamed (every chunk reads its group's C x d slice per role and
    GEMM; the tables exceed the L2 cache at these sizes), outputs and the per-pair (a, ds)
    buffer; apart, L2 bytes: the gathered token rows (x fits in L2: B·N·C·2 bytes, 5-13 MB
    here) and the fp32 accumulators' read-modify-write (small per block);
  - intensity = executed FLOPs / HBM bytes, and the time at the H100 roofline:
    max(executed FLOPs / 990 TFLOP/s dense bf16, HBM bytes / 3.35 TB/s), next to a plain GEMM
    doing the same useful FLOPs at the compute roof.
The kernels' own efficiency below the roofline (occupancy: 1 block of 256 threads per SM at
~200 registers, synchronisations, the serial softmax) is not modelled: real times will be longer.

    python bench/translution_attention_cuda_model.py   # writes bench/results/translution_attention_cuda_model.*
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from translution_ext import indexing  # noqa: E402

PEAK_FLOPS = 990e12  # H100 SXM dense bf16
HBM_BYTES = 3.35e12  # H100 SXM HBM3
TILE_ROWS, BATCH_TILE, CHUNK_ROWS, TILE_COLS = 16, 4, 64, 64
BF16, FP32 = 2, 4
CASES = {
    "vit_tiny": dict(layout="2d_cls", size=(14, 14), dim=192, heads=3, batch=64),
    "vit_small": dict(layout="2d_cls", size=(14, 14), dim=384, heads=6, batch=64),
    "vit_base": dict(layout="2d_cls", size=(14, 14), dim=768, heads=12, batch=64),
    "gpt_causal_1024": dict(layout="causal", size=1024, dim=768, heads=12, batch=8),
}
DIM_HEAD = 64


def index_maps(layout: str, size):
    if layout == "2d_cls":
        ix = indexing.offset_index_2d_cls(size)
    else:
        ix = indexing.offset_index_causal_1d(size)
    return ix.key.numpy(), ix.num_classes, layout == "causal"


def segments(key: np.ndarray, causal: bool):
    """Per query tile and per key tile: the pair count of every (tile, group) segment."""
    n = key.shape[0]
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    keep = (j <= i) if causal else np.ones_like(i, dtype=bool)
    cls, i, j = key[keep], i[keep], j[keep]
    out = {}
    for name, rows in (("query", i), ("key", j)):
        tile = rows // TILE_ROWS
        pairs = np.unique(cls.astype(np.int64) * (n // TILE_ROWS + 1) + tile, return_counts=True)[1]
        out[name] = pairs
    out["group"] = np.unique(cls, return_counts=True)[1]
    out["pairs"] = int(keep.sum())
    return out


def chunk_rows(seg_pairs: np.ndarray, batch: int, batch_tile: int, chunk: int):
    """(chunks, valid rows) summed over segments and batch tiles, for chunks of at most `chunk` rows."""
    chunks = rows = 0
    for b0 in range(0, batch, batch_tile):
        nb = min(batch_tile, batch - b0)
        per_chunk = chunk // nb
        chunks += int(np.ceil(seg_pairs / per_chunk).sum())
        rows += int(seg_pairs.sum()) * nb
    return chunks, rows


def tiles(width: int) -> int:
    return math.ceil(width / TILE_COLS) * TILE_COLS


def model(case: dict, batch_tile: int = BATCH_TILE, chunk: int = CHUNK_ROWS) -> dict:
    """The kernels as built (batch tile 4, 64-row chunks), or a what-if with other tile sizes."""
    key, R, causal = index_maps(case["layout"], case["size"])
    n, C, H, d, B = key.shape[0], case["dim"], case["heads"], DIM_HEAD, case["batch"]
    seg = segments(key, causal)
    P = seg["pairs"]
    gemm = lambda rows, k, cols: 2 * rows * k * cols  # noqa: E731
    qc, q_rows = chunk_rows(seg["query"], B, batch_tile, chunk)
    kc, k_rows = chunk_rows(seg["key"], B, batch_tile, chunk)
    q_chunks, k_chunks = qc * H, kc * H  # every head streams the same chunks
    g_chunks = int(np.ceil(seg["group"] * B / chunk).sum()) * H
    owners = batch_tile * TILE_ROWS
    slice_bytes = C * d * BF16  # one role's table slice for one head
    kernels = {}
    # forward: q, k, v projections per chunk; scores and weighted sum on the FMA units.
    kernels["forward"] = dict(
        useful=B * P * H * (3 * gemm(1, C, d) + 4 * d),
        executed=q_chunks * 3 * gemm(chunk, C, tiles(d)),
        hbm=q_chunks * 3 * slice_bytes + B * n * H * d * BF16 + B * H * n * FP32,
        l2=q_chunks * chunk * 3 * C * BF16)
    # query pass: recompute q, k, v; q_source gradient (chunk x d) @ (d x C); writes a, ds.
    kernels["backward_query"] = dict(
        useful=B * P * H * gemm(1, d, C),
        executed=q_chunks * (3 * gemm(chunk, C, tiles(d)) + gemm(chunk, tiles(d), tiles(C))),
        hbm=q_chunks * 4 * slice_bytes + 2 * B * H * P * FP32,
        l2=q_chunks * chunk * 3 * C * BF16 + q_chunks * owners * C * FP32 * 2)
    # key pass: recompute q; k_source and v_source gradients.
    kernels["backward_key"] = dict(
        useful=B * P * H * 2 * gemm(1, d, C),
        executed=k_chunks * (gemm(chunk, C, tiles(d)) + 2 * gemm(chunk, tiles(d), tiles(C))),
        hbm=k_chunks * 3 * slice_bytes + 2 * B * H * P * FP32,
        l2=k_chunks * chunk * C * BF16 + k_chunks * owners * 2 * C * FP32 * 2)
    # table pass: recompute q and k; three (C x chunk) @ (chunk x d) table-gradient GEMMs.
    kernels["backward_table"] = dict(
        useful=B * P * H * 3 * gemm(1, C, d),
        executed=g_chunks * (2 * gemm(chunk, C, tiles(d)) + 3 * gemm(tiles(C), chunk, tiles(d))),
        hbm=g_chunks * 2 * slice_bytes + 2 * B * H * P * FP32 + 3 * R * C * H * d * FP32,
        l2=g_chunks * chunk * 3 * C * BF16 + g_chunks * 3 * C * d * FP32 * 2)
    for k in kernels.values():
        k["intensity"] = k["executed"] / k["hbm"]
        k["compute_s"] = k["executed"] / PEAK_FLOPS
        k["memory_s"] = k["hbm"] / HBM_BYTES
        k["predicted_s"] = max(k["compute_s"], k["memory_s"])
        k["bound"] = "memory" if k["memory_s"] > k["compute_s"] else "compute"
        k["gemm_s"] = k["useful"] / PEAK_FLOPS
    return dict(case=case, tokens=n, classes=R, pairs=P, query_segments=int(seg["query"].size),
                pair_rows_forward=q_rows, kernels=kernels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "translution_attention_cuda_model"))
    args = parser.parse_args()
    results = {name: model(case) for name, case in CASES.items()}
    what_if = {name: model(case, batch_tile=16, chunk=256) for name, case in CASES.items()}
    lines = [
        "# Fused Translution attention on CUDA: performance MODEL (a prediction; no GPU measured it)",
        f"# date {datetime.date.today()}; H100 SXM roofline: {PEAK_FLOPS / 1e12:.0f} TFLOP/s dense bf16, "
        f"{HBM_BYTES / 1e12:.2f} TB/s HBM (ridge {PEAK_FLOPS / HBM_BYTES:.0f} FLOP/byte)",
        "# Translution QKV layer, bf16, head width 64; made by: python bench/translution_attention_cuda_model.py",
        "# useful/executed in GFLOP; HBM = table slices streamed + outputs + pair buffer (GB); L2 = gathered token",
        "# rows + fp32 accumulator read-modify-write (GB, not in the time); GEMM = a plain GEMM of the useful FLOPs",
        "# at the compute roof; ratio = predicted / GEMM",
        "",
        f"{'case':16} {'kernel':15} {'useful':>8} {'executed':>9} {'HBM GB':>7} {'L2 GB':>6} {'FLOP/B':>6} "
        f"{'bound':>7} {'pred ms':>8} {'GEMM ms':>8} {'ratio':>6}"]
    for name, r in results.items():
        total_pred = total_gemm = 0.0
        for kname, k in r["kernels"].items():
            total_pred += k["predicted_s"]
            total_gemm += k["gemm_s"]
            lines.append(f"{name:16} {kname:15} {k['useful'] / 1e9:8.1f} {k['executed'] / 1e9:9.1f} "
                         f"{k['hbm'] / 1e9:7.2f} {k['l2'] / 1e9:6.2f} {k['intensity']:6.0f} {k['bound']:>7} "
                         f"{k['predicted_s'] * 1e3:8.2f} {k['gemm_s'] * 1e3:8.2f} "
                         f"{k['predicted_s'] / k['gemm_s']:6.1f}")
        lines.append(f"{name:16} {'fwd+bwd':15} {'':8} {'':9} {'':7} {'':6} {'':6} {'':>7} {total_pred * 1e3:8.2f} "
                     f"{total_gemm * 1e3:8.2f} {total_pred / total_gemm:6.1f}")
        lines.append(f"{'':16} N = {r['tokens']}, {r['classes']} classes, {r['pairs']} pairs, "
                     f"{r['query_segments']} (query tile, group) segments, batch {r['case']['batch']}")
    lines += ["", "What if: batch tile 16 and 256-row chunks (not built), fwd+bwd predicted ms (ratio to the GEMM):"]
    for name, r in what_if.items():
        pred = sum(k["predicted_s"] for k in r["kernels"].values())
        gemm_s = sum(k["gemm_s"] for k in r["kernels"].values())
        fwd = r["kernels"]["forward"]
        lines.append(f"  {name:16} {pred * 1e3:8.2f} ms ({pred / gemm_s:4.1f}x); forward {fwd['intensity']:.0f} FLOP/byte, "
                     f"{fwd['bound']}-bound")
    lines += [
        "",
        "Reading: a GEMM tile computes 64 rows against one staged C x 64 table slice, so the intensity is",
        "64 FLOP per byte of slice (the table pass, whose three table-gradient GEMMs read no slice,",
        "~150), below the H100 ridge (~296): the model says every kernel is memory-bound on streaming table",
        "slices, and that the whole layer takes ~12x (ViT) or ~6x (GPT, fuller chunks) the time of a GEMM",
        "of the same useful FLOPs; a 2D pair group also has only ~8 pairs in a 16-row query tile, so a",
        "chunk of a 4-item batch tile holds ~31 of its 64 rows.  The lever is rows per staged slice: the",
        "what-if (a batch tile of 16 and 256-row chunks: four WMMA row tiles sharing one staged slice, ~4x",
        "the shared memory for the output rows, which fits at head width 64 in bf16) reaches the ridge and",
        "~3x the GEMM time.  The ATen-composed CUDA path these kernels replace made ~15,000 launches per",
        "ViT-tiny forward and ran no tensor-core GEMM.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out + ".txt", "w") as f:
        f.write(text)
    with open(args.out + ".json", "w") as f:
        json.dump({"date": str(datetime.date.today()), "kind": "model (prediction)", "peak_flops": PEAK_FLOPS,
                   "hbm_bytes_per_s": HBM_BYTES, "results": results}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
