"""The deployed X-volution: Python entry, pure-PyTorch reference (also the export form), fake kernel.

Spec: xvolution.md.  C++: csrc/xvolution_deployed.{h,cpp} (schema, checks, the X part's
convolution), csrc/cpu/xvolution_deployed_cpu.cpp, csrc/cuda/xvolution_deployed_cuda.cu.

The op computes the folded convolution Conv_K(concat(X, T(X)); W*, b*) of a re-parameterised
XVolution without building T(X) or the concatenation, and skips the taps the fold leaves zero:
the T(X) channels of W* are read only on their centre Ka x Ka taps (Ka = pssa_kernel_size).
The native kernels are forward only; with autograd, under ``torch.export`` / ONNX export or
without a kernel for the device, :func:`xvolution_deployed_reference` (pad, slice, mul, cat,
conv2d: standard ops only) computes the same thing.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .. import _native
from .._checks import check_positive_int, check_tensor, is_int
from .pixel_shift_products import _check as _check_x_and_shifts
from .pixel_shift_products import pixel_shift_products_reference

__all__ = ["xvolution_deployed", "xvolution_deployed_reference"]

_OP = "xvolution_deployed: "
# Devices with a native kernel (computed once: a constant that torch.compile traces through).
DEVICE_TYPES: frozenset = _native._device_types("xvolution_deployed")


def xvolution_deployed_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                 shifts: Sequence[Tuple[int, int]], stride: int = 1,
                                 pssa_kernel_size: int = 1) -> torch.Tensor:
    """Conv_K(X; W*[:, :C], b*) + Conv_Ka(T(X); W*[:, C:, centre Ka x Ka]), in standard ops.

    Equal to Conv_K(concat(X, T(X)); W*, b*) when the T(X) taps outside the centre are zero
    (as :meth:`XVolution.reparameterize` leaves them).
    """
    c, k, ka = x.shape[1], weight.shape[-1], pssa_kernel_size
    off = (k - ka) // 2
    y = F.conv2d(x, weight[:, :c], bias, stride, k // 2)
    t = pixel_shift_products_reference(x, list(shifts))
    return y + F.conv2d(t, weight[:, c:, off:off + ka, off:off + ka], None, stride, ka // 2)


def _check(x, weight, bias, shifts, stride, pssa_kernel_size) -> list:
    """The C++ checks' rules and words, on every path, before any arithmetic; returns the flat shifts."""
    flat = _check_x_and_shifts(x, shifts, _OP)
    check_tensor("weight", weight, _OP)
    c, s = x.shape[1], len(flat) // 2
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
        raise ValueError(f"{_OP}weight must be a 4-D tensor (Co, C*(1 + S), K, K) with an odd K, "
                         f"got {tuple(weight.shape)}")
    if weight.shape[1] != c * (1 + s):
        raise ValueError(f"{_OP}weight must have C*(1 + S) = {c * (1 + s)} input channels (x has C = {c} channels, "
                         f"S = {s} shifts), got weight of shape {tuple(weight.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        check_tensor(name, t, _OP)
        if name == "bias" and tuple(t.shape) != (weight.shape[0],):
            raise ValueError(f"{_OP}bias must have shape (Co,) = ({weight.shape[0]},), got {tuple(t.shape)}")
        if t.dtype != x.dtype:
            raise TypeError(f"{_OP}{name} must have the dtype of x ({x.dtype}), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{_OP}{name} must be on x's device ({x.device}), got {t.device}")
    check_positive_int("stride", stride, _OP)
    k = weight.shape[2]
    if not is_int(pssa_kernel_size) or pssa_kernel_size < 1 or pssa_kernel_size % 2 == 0 or pssa_kernel_size > k:
        raise ValueError(f"{_OP}pssa_kernel_size must be odd and in [1, K = {k}], got {pssa_kernel_size!r}")
    return flat


def xvolution_deployed(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       shifts: Sequence[Tuple[int, int]], stride: int = 1, pssa_kernel_size: int = 1) -> torch.Tensor:
    """The deployed X-volution, Conv_K(concat(X, T(X)); W*, b*), without materialising T(X).

    Args:
        x: (B, C, H, W).
        weight: W*, (Co, C·(1 + S), K, K), K odd: channels [0, C) read X, channel C + s·C + c reads
            T(X)'s X[c] ⊙ S_{shifts[s]}(X[c]), on the centre Ka × Ka taps only.
        bias: b*, (Co,), or None.
        shifts: the S (dy, dx) pairs of T(X), e.g. :func:`shift_offsets`.
        stride: s; padding is K // 2 (Ka // 2 for the T(X) taps: the same output grid).
        pssa_kernel_size: Ka, odd, <= K.

    Returns:
        (B, Co, ceil(H / s), ceil(W / s)).  Differentiable (through the reference).
    """
    flat = _check(x, weight, bias, shifts, stride, pssa_kernel_size)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    exporting = torch.compiler.is_exporting() or torch.jit.is_tracing()
    if x.device.type not in DEVICE_TYPES or needs_grad or exporting:
        return xvolution_deployed_reference(x, weight, bias, list(shifts), stride, pssa_kernel_size)
    return torch.ops.translution_ext.xvolution_deployed(x, weight, bias, flat, stride, pssa_kernel_size)


def _register() -> None:
    @torch.library.register_fake("translution_ext::xvolution_deployed")
    def _(x, weight, bias, shifts, stride, pssa_kernel_size):
        b, _, h, w = x.shape
        return x.new_empty((b, weight.shape[0], (h + stride - 1) // stride, (w + stride - 1) // stride))


if DEVICE_TYPES:
    _register()
