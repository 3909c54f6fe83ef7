"""X-volution's folding routine: conv + BatchNorm branches into one convolution.

Spec: xvolution.md.  C++: csrc/xvolution_fold.cpp (schema and the routine, ATen
arithmetic registered for every device).  :func:`xvolution_fold_reference` is its
pure-PyTorch counterpart, used when the native library is not loaded.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import _native
from .._checks import check_positive_int, is_int

__all__ = ["xvolution_fold", "xvolution_fold_reference"]

_OP = "xvolution_fold: "


def xvolution_fold(branches, in_channels: int, kernel_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Folds conv + BatchNorm branches into one convolution (native routine).

    Args:
        branches: (weight (Co, Ci_i, k, k), bn: eval-mode BatchNorm2d, input channel offset) per branch.
        in_channels: input channels of the folded convolution.
        kernel_size: K, odd; every branch kernel is odd and at most K (zero-padded to K).

    Returns:
        W* (Co, in_channels, K, K) and b* (Co,).
    """
    _check_args(branches, in_channels, kernel_size)
    args = [[w for w, _, _ in branches], [bn.weight for _, bn, _ in branches],
            [bn.bias for _, bn, _ in branches], [bn.running_mean for _, bn, _ in branches],
            [bn.running_var for _, bn, _ in branches], [float(bn.eps) for _, bn, _ in branches],
            [int(o) for _, _, o in branches]]
    if not _native.has_native():
        return xvolution_fold_reference(*args, in_channels, kernel_size)
    return torch.ops.translution_ext.xvolution_fold(*args, in_channels, kernel_size)


def _check_args(branches, in_channels: int, kernel_size: int) -> None:
    """The routine's rules (the C++ checks' words) on every path, before any arithmetic."""
    check_positive_int("in_channels", in_channels, _OP)
    check_positive_int("kernel_size", kernel_size, _OP)
    if kernel_size % 2 == 0:
        raise ValueError(f"{_OP}kernel_size must be odd, got {kernel_size}")
    if not isinstance(branches, Sequence):
        raise TypeError(f"{_OP}branches must be a list of (weight, BatchNorm2d, input channel offset), "
                        f"got {type(branches).__name__}")
    if not branches:
        raise ValueError(f"{_OP}branches must hold at least one branch (weight, BatchNorm2d, input channel offset)")
    co = None
    for i, branch in enumerate(branches):
        if not (isinstance(branch, Sequence) and len(branch) == 3 and isinstance(branch[0], torch.Tensor)
                and isinstance(branch[1], nn.BatchNorm2d) and is_int(branch[2])):
            kinds = tuple(type(b).__name__ for b in branch) if isinstance(branch, Sequence) else type(branch).__name__
            raise TypeError(f"{_OP}branches[{i}] must be (weight tensor, BatchNorm2d, int input channel offset), "
                            f"got {kinds}")
        w, bn, offset = branch
        co = w.shape[0] if co is None else co
        if w.dim() != 4 or w.shape[0] != co or w.shape[2] != w.shape[3]:
            raise ValueError(f"{_OP}weights[{i}] must have shape (Co={co}, Ci, k, k), got {tuple(w.shape)}")
        k = w.shape[2]
        if k % 2 == 0 or k > kernel_size:
            raise ValueError(f"{_OP}weights[{i}] has a {k}x{k} kernel; every branch kernel must be odd and at most "
                             f"kernel_size = {kernel_size}")
        if offset < 0 or offset + w.shape[1] > in_channels:
            raise ValueError(f"{_OP}weights[{i}] reads input channels [{offset}, {offset + w.shape[1]}) outside "
                             f"in_channels = {in_channels}")
        if bn.num_features != co or bn.running_mean is None:
            raise ValueError(f"{_OP}branches[{i}] needs a BatchNorm2d({co}) with running statistics, got {bn!r}")


def xvolution_fold_reference(weights, gammas, betas, means, variances, eps, in_offsets, in_channels, kernel_size):
    """Pure-PyTorch form of the folding routine (same arguments as the native op)."""
    co = weights[0].shape[0]
    w_star = weights[0].new_zeros(co, in_channels, kernel_size, kernel_size)
    b_star = weights[0].new_zeros(co)
    for w, g, b, m, v, e, off in zip(weights, gammas, betas, means, variances, eps, in_offsets):
        t = g / torch.sqrt(v + e)
        pad = (kernel_size - w.shape[-1]) // 2
        w_star[:, off: off + w.shape[1]] += F.pad(w * t[:, None, None, None], (pad, pad, pad, pad))
        b_star += b - m * t
    return w_star, b_star
