"""X-volution (SA): the X-volution block with exact global self-attention as its attention
branch (spec: xvolution.md, the comparison variant).  It cannot be folded into a convolution."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import check_image, check_positive_int, is_int
from .xvolution import _odd


class XVolutionSA(nn.Module):
    """Y = BN(Conv_K(X)) + BN(W_o · SelfAttention(X)), attention over every pixel of the image.

    Queries are taken at the output pixels (every ``stride``-th pixel), keys and values at
    all pixels; q, k, v and the output projection are 1x1 convolutions, per head
    softmax(q·kᵀ / sqrt(d)) v.

    Args:
        in_channels, out_channels: Ci and Co (Co divisible by ``heads``).
        kernel_size: K of the conv branch, odd; padding K // 2.
        stride: s.
        heads: attention heads.

    forward: (B, Ci, H, W) -> (B, Co, ceil(H / s), ceil(W / s)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, heads: int = 1):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("stride", stride)):
            check_positive_int(name, value)
        _odd("kernel_size", kernel_size)
        message = f"heads must be a positive divisor of out_channels = {out_channels}, got {heads!r}"
        if not is_int(heads):
            raise TypeError(message)
        if heads < 1 or out_channels % heads:
            raise ValueError(message)
        self.in_channels, self.out_channels, self.kernel_size, self.stride, self.heads = (
            in_channels, out_channels, kernel_size, stride, heads)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn_conv = nn.BatchNorm2d(out_channels)
        self.qkv = nn.Conv2d(in_channels, 3 * out_channels, 1, bias=False)
        self.attn_out = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_attn = nn.BatchNorm2d(out_channels)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"heads={self.heads}")

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention branch before its BatchNorm: (B, Ci, H, W) -> (B, Co, H', W')."""
        q, k, v = self.qkv(x).chunk(3, dim=1)
        q = q[:, :, :: self.stride, :: self.stride]
        b, c, ho, wo = q.shape
        tokens = lambda t: t.flatten(2).unflatten(1, (self.heads, c // self.heads)).transpose(2, 3)  # noqa: E731
        o = F.scaled_dot_product_attention(tokens(q), tokens(k), tokens(v))  # (B, heads, H'W', d)
        return self.attn_out(o.transpose(2, 3).reshape(b, c, ho, wo))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Ci, H, W) -> (B, Co, ceil(H / stride), ceil(W / stride))."""
        check_image(x, self.in_channels, self.conv.weight, "XVolutionSA block")
        return self.bn_conv(self.conv(x)) + self.bn_attn(self.attention(x))

    def reparameterize(self) -> "XVolutionSA":
        """Always raises: exact self-attention depends on the input through the softmax, so no
        convolution computes it.  Use :class:`XVolution` (pixel-shift attention) to deploy."""
        raise NotImplementedError(
            "XVolutionSA cannot be re-parameterised: its exact self-attention branch is input-dependent "
            "(softmax over all pixels) and has no convolution equivalent; use XVolution, whose pixel-shift "
            "attention branch folds into one convolution")
