"""Attention arithmetic shared by the Translution blocks.

A role tensor is either *shared*, (B, N, D) with one vector per token, or
*relative*, (B, N, N, D) with one vector per (query i, key j) pair.  D = H·d;
head h owns columns [h·d, (h+1)·d).  The functions below accept either form for
every role, so the seven Translution variants and α-Translution use one code path.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import _native
from .._autocast import autocast_inputs
from ..ops.relative_offset_projection import relative_offset_projection, relative_offset_projection_by_class
from ..ops.translution_attention import attention_weights, pair_scores, weighted_sum

__all__ = ["BACKENDS", "attention_weights", "backend_unavailable_reason", "combine_scores",
           "fused_cuda_shared_memory_reason", "pair_scores",
           "project_relative", "resolve_backend", "weighted_sum"]

BACKENDS = ("auto", "fused", "native", "reference")


def fused_cuda_shared_memory_reason(device: torch.device, widths: Optional[Tuple[torch.dtype, int, int]]
                                    ) -> Optional[str]:
    """Why the fused CUDA kernels cannot run heads of ``widths`` = (dtype, q/k width, v width) on ``device``:
    their blocks would need more shared memory than the device has per block; None when they fit."""
    if widths is None or device.type != "cuda" or not torch.cuda.is_available():
        return None
    try:
        op = torch.ops.translution_ext.translution_attention_shared_memory  # CUDA builds only
    except (AttributeError, RuntimeError):
        return None
    dtype, width, value_width = widths
    need = max(op(dtype, width, value_width))
    have = torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    if need <= have:
        return None
    return (f"the fused CUDA kernels need {need} bytes of shared memory per block for head widths "
            f"{width} (q, k) and {value_width} (v) in {dtype}, over this device's {have}")


def backend_unavailable_reason(backend: str, device: torch.device, dropout_active: bool,
                               widths: Optional[Tuple[torch.dtype, int, int]] = None) -> Optional[str]:
    """None when ``backend`` can run on ``device`` (a torch.device or its name), else the reason.

    ``widths`` = (dtype, q/k width per head, v width per head) of the layer, when known: on CUDA the
    fused kernels run only when their blocks fit the device's shared memory.
    """
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
    if backend == "fused":
        reason = fused_cuda_shared_memory_reason(device, widths)
        if reason is not None:
            return reason
    if backend == "fused" and dropout_active:
        return "the fused kernels do not apply dropout to the attention weights (dropout > 0 in training)"
    return None


def resolve_backend(backend: str, device: torch.device, dropout_active: bool = False,
                    widths: Optional[Tuple[torch.dtype, int, int]] = None) -> str:
    """The backend that will run on ``device``: "fused", "native" or "reference".

    "auto" picks the first that can run of fused (memory-linear kernels), native
    (relative-offset projection kernels) and reference (pure PyTorch); a forced
    backend that cannot run raises RuntimeError saying why.  The rule, on CUDA as on
    CPU: fused whenever it can run — it never stores a per-pair tensor (extra memory
    O(B·H·N²) scalars against the projection path's B·N²·H·d per relative role), does the
    same useful FLOPs, and makes 1 launch forward and 3 (fp32) or 4 (fp16/bf16) backward;
    it cannot run with attention dropout, or on CUDA when the layer's head ``widths``
    need more shared memory per block than the device has.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend == "auto":
        return next(b for b in BACKENDS[1:] if backend_unavailable_reason(b, device, dropout_active, widths) is None)
    reason = backend_unavailable_reason(backend, device, dropout_active, widths)
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
