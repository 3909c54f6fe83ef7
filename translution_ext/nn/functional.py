"""Attention arithmetic shared by the Translution blocks.

A role tensor is either *shared*, (B, N, D) with one vector per token, or
*relative*, (B, N, N, D) with one vector per (query i, key j) pair.  D = H·d;
head h owns columns [h·d, (h+1)·d).  The functions below accept either form for
every role, so the seven Translution variants and α-Translution use one code path.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import _native, ops, reference

BACKENDS = ("auto", "native", "reference")


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that will run on ``device``: "native" or "reference".

    "auto" picks the native kernels when they are loaded and built for the
    device; a forced "native" that cannot run raises RuntimeError saying why.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    native_ok = device.type in _native.NATIVE_DEVICE_TYPES
    if backend == "auto":
        return "native" if native_ok else "reference"
    if backend == "native" and not native_ok:
        if not _native.has_native():
            reason = f"the native library is not loaded: {_native.LOAD_ERROR}"
        else:
            reason = (f"the native library has no kernels for device type {device.type!r} "
                      f"(built for {sorted(_native.NATIVE_DEVICE_TYPES)})")
        raise RuntimeError(f"backend='native' cannot run: {reason}; use backend='auto' or 'reference'")
    return backend


def project_relative(x: torch.Tensor, table: torch.Tensor, index: torch.Tensor, side: str,
                     backend: str) -> torch.Tensor:
    """(B, N, C) x (R, C, D) -> (B, N, N, D) with the given resolved backend."""
    if backend == "native":
        return ops.relative_offset_projection(x, table, index, side)
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, table = x.to(dtype), table.to(dtype)
    return reference.relative_offset_projection_by_class(x, table, index, side)


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., H·d) -> (..., H, d)."""
    return t.unflatten(-1, (heads, t.shape[-1] // heads))


def pair_scores(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """<q_ij, k_ij> per head: (B, H, N, N) from shared or relative q and k."""
    if q.dim() == 3 and k.dim() == 3:  # both shared: an ordinary batched GEMM
        return torch.einsum("bihd,bjhd->bhij", _heads(q, heads), _heads(k, heads))
    # A relative operand makes this a per-pair dot product: memory-bound, so a
    # broadcast multiply and a reduction beat a batched GEMM of 1 x d matrices.
    q = q[:, :, None] if q.dim() == 3 else q  # shared q_i serves every j
    k = k[:, None] if k.dim() == 3 else k  # shared k_j serves every i
    return _heads(q * k, heads).sum(-1).permute(0, 3, 1, 2)


def attention_weights(scores: torch.Tensor, causal: bool, dropout: float, training: bool) -> torch.Tensor:
    """softmax over keys (with the causal mask j > i -> -inf), then dropout."""
    if causal:
        n = scores.shape[-1]
        mask = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    attn = scores.softmax(dim=-1)
    return F.dropout(attn, dropout, training) if dropout > 0 else attn


def weighted_sum(attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """o_i = sum_j a_ij v_ij: (B, H, N, N) with shared or relative v -> (B, N, H·d)."""
    heads = attn.shape[1]
    if v.dim() == 3:  # shared: an ordinary batched GEMM
        return torch.einsum("bhij,bjhd->bihd", attn, _heads(v, heads)).flatten(-2)
    weights = attn.permute(0, 2, 3, 1)[..., None]  # (B, N, N, H, 1)
    return (weights * _heads(v, heads)).sum(2).flatten(-2)


def combine_scores(plain: torch.Tensor, relative: Optional[torch.Tensor], alpha: float) -> torch.Tensor:
    """(1 − α)·plain + α·relative (α-Translution); plain alone when there is no relative term."""
    if relative is None:
        return plain
    return (1 - alpha) * plain + alpha * relative
