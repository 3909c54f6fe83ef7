"""Attention arithmetic shared by the Translution blocks.

A role tensor is either *shared*, (B, N, D) with one vector per token, or
*relative*, (B, N, N, D) with one vector per (query i, key j) pair.  D = H·d;
head h owns columns [h·d, (h+1)·d).  The functions below accept either form for
every role, so the seven Translution variants and α-Translution use one code path.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _native
from .._autocast import autocast_inputs
from ..ops.relative_offset_projection import relative_offset_projection, relative_offset_projection_by_class
from ..ops.translution_attention import attention_weights, pair_scores, weighted_sum

__all__ = ["BACKENDS", "attention_weights", "backend_unavailable_reason", "combine_scores", "pair_scores",
           "project_relative", "resolve_backend", "weighted_sum"]

BACKENDS = ("auto", "fused", "native", "reference")


def backend_unavailable_reason(backend: str, device: torch.device, dropout_active: bool) -> Optional[str]:
    """None when ``backend`` can run on ``device`` (a torch.device or its name), else the reason."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    device = torch.device(device)
    if backend == "reference":
        return None
    if not _native.has_native():
        return f"the native library is not loaded: {_native.LOAD_ERROR}"
    if device.type == "cuda" and _native.CUDA_ARCH_REASON is not None:
        return _native.CUDA_ARCH_REASON
    types = _native.FUSED_DEVICE_TYPES if backend == "fused" else _native.NATIVE_DEVICE_TYPES
    if device.type not in types:
        return f"the native library has no {backend} kernels for device type {device.type!r} (built for {sorted(types)})"
    if backend == "fused" and device.type == "cuda" and torch.are_deterministic_algorithms_enabled():
        # The ATen-composed path runs cuBLAS GEMMs (which need CUBLAS_WORKSPACE_CONFIG in this mode)
        # and index_add_ over repeated rows; the projection kernels are deterministic by construction.
        return ("the fused path on CUDA is not deterministic (cuBLAS GEMMs and index_add_ of the ATen-composed "
                "implementation) and torch.use_deterministic_algorithms(True) is set")
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
        return relative_offset_projection(x, table, index, side)
    x, table = autocast_inputs(x.device.type, x, table)
    return relative_offset_projection_by_class(x, table, index, side)


def combine_scores(plain: torch.Tensor, relative: Optional[torch.Tensor], alpha: float) -> torch.Tensor:
    """(1 − α)·plain + α·relative (α-Translution); plain alone when there is no relative term."""
    if relative is None:
        return plain
    return (1 - alpha) * plain + alpha * relative
