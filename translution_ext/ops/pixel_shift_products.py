"""X-volution's pixel-shift products T(X): Python entry, pure-PyTorch reference, fake kernels, autograd.

Spec: xvolution.md.  C++: csrc/pixel_shift_products.{h,cpp} (schemas, checks, the
per-element rule), csrc/cpu/pixel_shift_products_cpu.cpp,
csrc/cuda/pixel_shift_products_cuda.cu.  The op runs the native kernel where one is
built for the input's device and :func:`pixel_shift_products_reference` otherwise.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from .. import _native
from .._checks import check_float_dtype, is_int

__all__ = ["DIRECTIONS", "pixel_shift_products", "pixel_shift_products_reference", "shift_offsets"]

_OP = "pixel_shift_products: "
# The 8 neighbour directions (dy, dx), row-major, without (0, 0).
DIRECTIONS: Tuple[Tuple[int, int], ...] = tuple(
    (dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def shift_offsets(shift_lengths: Sequence[int] = (1,)) -> List[Tuple[int, int]]:
    """The shifts D: the 8 directions scaled by each length, length-major."""
    message = f"shift_lengths must be a non-empty sequence of positive ints, got {shift_lengths!r}"
    if not isinstance(shift_lengths, Sequence) or isinstance(shift_lengths, str):
        raise TypeError(message)
    if not shift_lengths or any(not is_int(n) or n < 1 for n in shift_lengths):
        raise ValueError(message)
    return [(n * dy, n * dx) for n in shift_lengths for dy, dx in DIRECTIONS]


def pixel_shift_products_reference(x: torch.Tensor, shifts: Sequence[Tuple[int, int]]) -> torch.Tensor:
    """T(X) = concat_s X * S_s(X), S_s(X)[y, x] = X[y + dy, x + dx] (0 outside): (B, S·C, H, W)."""
    h, w = x.shape[-2:]
    m = max(max(abs(dy), abs(dx)) for dy, dx in shifts)
    padded = F.pad(x, (m, m, m, m))
    return torch.cat([x * padded[..., m + dy: m + dy + h, m + dx: m + dx + w] for dy, dx in shifts], dim=1)


def _check(x: torch.Tensor, shifts, op: str = _OP) -> List[int]:
    """Checks x (B, C, H, W) and the (dy, dx) shifts; returns the shifts flattened.  ``op``: the message prefix."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"{op}x must be a 4-D tensor (B, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    check_float_dtype("x", x, op)
    if not isinstance(shifts, Sequence) or isinstance(shifts, str):
        raise TypeError(f"{op}shifts must be a non-empty list of (dy, dx) pairs, got {type(shifts).__name__}")
    if not shifts:
        raise ValueError(f"{op}shifts must be a non-empty list of (dy, dx) pairs")
    for i, pair in enumerate(shifts):
        message = f"{op}shifts[{i}] must be a pair of ints (dy, dx), got {pair!r}"
        if isinstance(pair, Sequence) and len(pair) != 2:
            raise ValueError(message)
        # A shift is a whole number of pixels: int(0.5) would silently become 0.
        if not isinstance(pair, Sequence) or not all(is_int(v) for v in pair):
            raise TypeError(message)
    return [v for pair in shifts for v in pair]


def pixel_shift_products(x: torch.Tensor, shifts: Sequence[Tuple[int, int]]) -> torch.Tensor:
    """The transformed features T(X) of X-volution.

    Args:
        x: (B, C, H, W).
        shifts: (dy, dx) pairs, e.g. :func:`shift_offsets`.

    Returns:
        (B, len(shifts)·C, H, W): channel s·C + c is X[c] * X[c] shifted by shifts[s],
        zero where the shifted pixel is outside the image.  Differentiable in x.
    """
    flat = _check(x, shifts)
    if x.device.type in _native.PIXEL_SHIFT_DEVICE_TYPES:
        return torch.ops.translution_ext.pixel_shift_products(x, flat)
    return pixel_shift_products_reference(x, list(shifts))


def _register() -> None:
    lib = "translution_ext::"

    @torch.library.register_fake(lib + "pixel_shift_products")
    def _(x, shifts):
        return x.new_empty((x.shape[0], len(shifts) // 2 * x.shape[1], x.shape[2], x.shape[3]))

    @torch.library.register_fake(lib + "pixel_shift_products_backward")
    def _(grad_out, x, shifts):
        return torch.empty_like(x)

    def setup_context(ctx, inputs, output):
        x, shifts = inputs
        ctx.shifts = shifts
        ctx.save_for_backward(x)

    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.ops.translution_ext.pixel_shift_products_backward(grad.contiguous(), x, ctx.shifts), None

    torch.library.register_autograd(lib + "pixel_shift_products", backward, setup_context=setup_context)


if _native.PIXEL_SHIFT_DEVICE_TYPES:
    _register()
