"""X-volution's folding routine: conv + BatchNorm branches into one convolution.

Spec: xvolution.md.  C++: csrc/xvolution_fold.cpp (schema and the routine, ATen
arithmetic registered for every device).  :func:`xvolution_fold_reference` is its
pure-PyTorch counterpart, used when the native library is not loaded.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .. import _native

__all__ = ["xvolution_fold", "xvolution_fold_reference"]


def xvolution_fold(branches, in_channels: int, kernel_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Folds conv + BatchNorm branches into one convolution (native routine).

    Args:
        branches: (weight (Co, Ci_i, k, k), bn: eval-mode BatchNorm2d, input channel offset) per branch.
        in_channels: input channels of the folded convolution.
        kernel_size: K, odd; every branch kernel is odd and at most K (zero-padded to K).

    Returns:
        W* (Co, in_channels, K, K) and b* (Co,).
    """
    args = [[w for w, _, _ in branches], [bn.weight for _, bn, _ in branches],
            [bn.bias for _, bn, _ in branches], [bn.running_mean for _, bn, _ in branches],
            [bn.running_var for _, bn, _ in branches], [float(bn.eps) for _, bn, _ in branches],
            [int(o) for _, _, o in branches]]
    if not _native.has_native():
        return xvolution_fold_reference(*args, in_channels, kernel_size)
    return torch.ops.translution_ext.xvolution_fold(*args, in_channels, kernel_size)


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
