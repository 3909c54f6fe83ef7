"""X-volution: a convolution branch plus a pixel-shift self-attention branch, foldable into one conv.

Spec: xvolution.md.  Train the multi-branch form, call :meth:`XVolution.reparameterize`
(or :func:`translution_ext.reparameterize_model`) in eval mode, deploy one convolution over
the input and its transformed features.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .._checks import check_image, check_positive_int, check_positive_odd_int
from ..ops.pixel_shift_products import pixel_shift_products, shift_offsets
from ..ops.xvolution_deployed import xvolution_deployed
from ..ops.xvolution_fold import xvolution_fold


def _odd(name: str, k: int) -> None:
    check_positive_odd_int(name, k, why=" (the branches are folded at the kernel centre)")


def check_xvolution_sizes(in_channels: int, out_channels: int, kernel_size: int, stride: int,
                          pssa_kernel_size: int) -> None:
    """The size arguments of an X-volution layer (training, deployed or its plain-PyTorch form)."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("stride", stride)):
        check_positive_int(name, value)
    _odd("kernel_size", kernel_size)
    _odd("pssa_kernel_size", pssa_kernel_size)
    if pssa_kernel_size > kernel_size:
        raise ValueError(f"pssa_kernel_size must be <= kernel_size = {kernel_size}, got {pssa_kernel_size}")


class XVolution(nn.Module):
    """X-volution block, Y = BN(Conv_K(X)) + BN(Conv_Ka(T(X))) (+ optional RepVGG-style extras).

    T(X) = concat over shifts δ of X ⊙ S_δ(X): the interaction of each pixel with its
    neighbour at δ (8 directions per shift length).

    Args:
        in_channels, out_channels: Ci and Co.
        kernel_size: K, odd; padding K // 2.
        stride: s.
        shift_lengths: the neighbour distances; |D| = 8·len(shift_lengths).
        pssa_kernel_size: Ka, 1 or another odd size <= K, of the conv on T(X).
        extra_branches: add a 1x1 conv + BN branch and, when Ci == Co and s == 1, an identity BN.
        deploy: build the deployed form directly (one conv with bias), e.g. to load a
            re-parameterised state_dict.

    The deployed form keeps W* and b* as one ordinary conv (``deployed_conv``) and runs it with
    the native op :func:`~translution_ext.ops.xvolution_deployed`, which never builds T(X) and
    skips the taps the fold leaves zero (the T(X) channels outside the centre Ka x Ka).

    forward: (B, Ci, H, W) -> (B, Co, H', W').
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 shift_lengths: Sequence[int] = (1,), pssa_kernel_size: int = 1, extra_branches: bool = False,
                 deploy: bool = False):
        super().__init__()
        check_xvolution_sizes(in_channels, out_channels, kernel_size, stride, pssa_kernel_size)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.pssa_kernel_size = kernel_size, stride, pssa_kernel_size
        self.shift_lengths = tuple(shift_lengths)
        self.shifts = shift_offsets(self.shift_lengths)
        self.deployed = deploy
        folded_in = in_channels * (1 + len(self.shifts))
        if deploy:
            self.deployed_conv = nn.Conv2d(folded_in, out_channels, kernel_size, stride, kernel_size // 2, bias=True)
            return
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn_conv = nn.BatchNorm2d(out_channels)
        self.pssa_conv = nn.Conv2d(in_channels * len(self.shifts), out_channels, pssa_kernel_size, stride,
                                   pssa_kernel_size // 2, bias=False)
        self.bn_pssa = nn.BatchNorm2d(out_channels)
        self.conv_1x1 = nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False) if extra_branches else None
        self.bn_1x1 = nn.BatchNorm2d(out_channels) if extra_branches else None
        identity = extra_branches and in_channels == out_channels and stride == 1
        self.bn_identity = nn.BatchNorm2d(in_channels) if identity else None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"shift_lengths={self.shift_lengths}, pssa_kernel_size={self.pssa_kernel_size}, "
                f"deployed={self.deployed}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Ci, H, W) -> (B, Co, ceil(H / stride), ceil(W / stride))."""
        conv = self.deployed_conv if self.deployed else self.conv
        check_image(x, self.in_channels, conv.weight, "XVolution block")
        if self.deployed:
            # under autocast x may differ from the parameters' dtype; the op takes one dtype
            weight, bias = self.deployed_conv.weight.to(x.dtype), self.deployed_conv.bias.to(x.dtype)
            return xvolution_deployed(x, weight, bias, self.shifts, self.stride, self.pssa_kernel_size)
        t = pixel_shift_products(x, self.shifts)
        y = self.bn_conv(self.conv(x)) + self.bn_pssa(self.pssa_conv(t))
        if self.conv_1x1 is not None:
            y = y + self.bn_1x1(self.conv_1x1(x))
        if self.bn_identity is not None:
            y = y + self.bn_identity(x)
        return y

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        weight = state_dict.get(prefix + "deployed_conv.weight")
        if self.deployed and isinstance(weight, torch.Tensor) and weight.dim() == 4 and not weight.is_meta:
            # the op reads the T(X) channels on the centre Ka x Ka taps only: refuse weights it would cut
            ka, k, ci = self.pssa_kernel_size, self.kernel_size, self.in_channels
            outer = weight[:, ci:].clone()
            outer[:, :, (k - ka) // 2:(k + ka) // 2, (k - ka) // 2:(k + ka) // 2] = 0
            if outer.numel() and outer.abs().max().item() != 0:
                raise ValueError(f"XVolution: the deployed weight has non-zero T(X) taps outside the centre "
                                 f"{ka}x{ka}; build the module with the pssa_kernel_size it was trained with "
                                 f"(pssa_kernel_size={ka} here)")

    @torch.no_grad()
    def reparameterize(self) -> "XVolution":
        """Folds every branch into one convolution over [X, T(X)] (native routine); in place.

        Needs eval-mode BatchNorm (running statistics).  A second call does nothing.
        """
        if self.deployed:
            return self
        bns = [m for m in (self.bn_conv, self.bn_pssa, self.bn_1x1, self.bn_identity) if m is not None]
        if any(bn.training for bn in bns):
            raise RuntimeError("XVolution.reparameterize needs BatchNorm in eval mode (running statistics); "
                               "call model.eval() first")
        ci = self.in_channels
        branches = [(self.conv.weight, self.bn_conv, 0), (self.pssa_conv.weight, self.bn_pssa, ci)]
        if self.conv_1x1 is not None:
            branches.append((self.conv_1x1.weight, self.bn_1x1, 0))
        if self.bn_identity is not None:
            eye = torch.eye(ci, dtype=self.conv.weight.dtype, device=self.conv.weight.device)[:, :, None, None]
            branches.append((eye, self.bn_identity, 0))
        weight, bias = xvolution_fold(branches, ci * (1 + len(self.shifts)), self.kernel_size)
        conv = nn.Conv2d(weight.shape[1], self.out_channels, self.kernel_size, self.stride, self.kernel_size // 2,
                         bias=True).to(weight.device, weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        for name in ("conv", "bn_conv", "pssa_conv", "bn_pssa", "conv_1x1", "bn_1x1", "bn_identity"):
            delattr(self, name)
        self.deployed_conv = conv
        self.deployed = True
        return self
