"""Baselines the benchmarks compare against: the reference code's approach for Translution
(gathered per-pair weights), a GEMM of the same FLOPs (the roofline), SDPA attention."""
from __future__ import annotations

from typing import Callable

import torch


def project_matmul(tokens: torch.Tensor, gathered: torch.Tensor, query_side: bool) -> torch.Tensor:
    """The reference code's projection: (B, N, C) x (rows, N, C, D) by broadcast matmul -> (B, rows, N, D)."""
    if query_side:  # q_ij reads x_i: put token i where the matmul pairs it with row i
        tokens = tokens[:, : gathered.shape[0]]
        return torch.matmul(tokens[:, :, None, None, :], gathered[None]).squeeze(3)
    return torch.matmul(tokens[:, None, :, None, :], gathered[None]).squeeze(3)


def project_einsum(tokens: torch.Tensor, gathered: torch.Tensor, query_side: bool) -> torch.Tensor:
    """The same projection as an einsum (no per-batch copy of the weights): a stronger baseline."""
    if query_side:
        return torch.einsum("bic,ijcd->bijd", tokens[:, : gathered.shape[0]], gathered)
    return torch.einsum("bjc,ijcd->bijd", tokens, gathered)


def reference_translution(block, x: torch.Tensor, rows: int, project: Callable = project_einsum) -> torch.Tensor:
    """The reference approach for a Translution QKV block on its first ``rows`` query tokens.

    Gathers table[index] into (rows, N, C, D) weights per role, projects, and forms
    (B, rows, N, D) q/k/v tensors, scores and the weighted sum.  x: (B, N, C) -> (B, rows, C).
    Exact for those rows: the softmax is per row.
    """
    key, query = block.key_index[:rows], block.query_index[:rows]
    h = block.norm(x)
    q = project(h, block.q_table[query], True)
    k = project(h, block.k_table[key], False)
    v = project(h, block.v_table[key], False)
    heads = lambda t: t.unflatten(-1, (block.heads, block.dim_head))  # noqa: E731
    dots = (heads(q) * heads(k)).sum(-1) * block.scale  # (B, rows, N, H)
    if block.layout.causal:
        n = x.shape[1]
        dots = dots.masked_fill(torch.ones(rows, n, dtype=torch.bool, device=x.device).triu(1)[None, :, :, None],
                                float("-inf"))
    attn = dots.softmax(dim=2)
    return block.out_proj((attn[..., None] * heads(v)).sum(2).flatten(-2))


def gemm_step(m: int, k: int, n: int, device: str, dtype: torch.dtype, backward: bool) -> Callable[[], None]:
    """(m, k) @ (k, n), plus the two backward GEMMs when ``backward``: 2·m·k·n FLOPs, 3x with backward."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    w = torch.randn(k, n, device=device, dtype=dtype)
    g = torch.randn(m, n, device=device, dtype=dtype)

    def step():
        a @ w
        if backward:
            g @ w.t()
            a.t() @ g
    return step
