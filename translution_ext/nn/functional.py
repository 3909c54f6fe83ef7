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
from .._autocast import autocast_inputs

BACKENDS = ("auto", "fused", "native", "reference")


def backend_unavailable_reason(backend: str, device: torch.device, dropout_active: bool) -> Optional[str]:
    """None when ``backend`` can run here, else the reason."""
    if backend == "reference":
        return None
    if not _native.has_native():
        return f"the native library is not loaded: {_native.LOAD_ERROR}"
    types = _native.FUSED_DEVICE_TYPES if backend == "fused" else _native.NATIVE_DEVICE_TYPES
    if device.type not in types:
        return f"the native library has no {backend} kernels for device type {device.type!r} (built for {sorted(types)})"
    if backend == "fused" and dropout_active:
        return "the fused kernels do not apply dropout to the attention weights (dropout > 0 in training)"
    return None


def resolve_backend(backend: str, device: torch.device, dropout_active: bool = False) -> str:
    """The backend that will run on ``device``: "fused", "native" or "reference".

    "auto" picks the first that can run of fused (memory-linear kernels), native
    (relative-offset projection kernels) and reference (pure PyTorch); a forced
    backend that cannot run raises RuntimeError saying why.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend == "auto":
        return next(b for b in BACKENDS[1:] if backend_unavailable_reason(b, device, dropout_active) is None)
    reason = backend_unavailable_reason(backend, device, dropout_active)
    if reason is not None:
        raise RuntimeError(f"backend={backend!r} cannot run: {reason}; use backend='auto' or 'reference'")
    return backend


def project_relative(x: torch.Tensor, table: torch.Tensor, index: torch.Tensor, side: str,
                     backend: str) -> torch.Tensor:
    """(B, N, C) x (R, C, D) -> (B, N, N, D) with the given resolved backend."""
    if backend == "native":
        return ops.relative_offset_projection(x, table, index, side)
    x, table = autocast_inputs(x.device.type, x, table)
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
