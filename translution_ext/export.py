"""Deployed X-volution in standard PyTorch ops: for torch.export, ONNX and hosts without the native library.

A re-parameterised :class:`~translution_ext.nn.XVolution` runs the native ``xvolution_deployed``
op; under ``torch.export`` / ``torch.onnx.export`` it already switches to the op's reference
(pad, slice, mul, cat, conv2d).  The modules here are that reference as a plain module with the
deployed XVolution's state_dict keys (``deployed_conv.weight``, ``deployed_conv.bias``), so a
saved deployed state_dict loads into them and runs with ``TRANSLUTION_EXT_DISABLE_NATIVE=1``::

    torch.save(translution_ext.reparameterize_model(net).state_dict(), "net.pt")
    # elsewhere: the same architecture, every XVolution built by deployed_xvolution_reference
    plain = torch.nn.Sequential(deployed_xvolution_reference(3, 32), torch.nn.ReLU(), ...)
    plain.load_state_dict(torch.load("net.pt"))
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from .nn.xvolution import check_xvolution_sizes
from .ops.pixel_shift_products import shift_offsets
from .ops.xvolution_deployed import xvolution_deployed_reference

__all__ = ["DeployedXVolutionReference", "deployed_xvolution_reference", "to_reference"]


class DeployedXVolutionReference(nn.Module):
    """A deployed X-volution in standard ops: Conv_K(X; W*[:, :C], b*) + Conv_Ka(T(X); W*[:, C:, centre]).

    Same arguments and state_dict as ``XVolution(..., deploy=True)``.
    forward: (B, Ci, H, W) -> (B, Co, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 shift_lengths: Sequence[int] = (1,), pssa_kernel_size: int = 1):
        super().__init__()
        check_xvolution_sizes(in_channels, out_channels, kernel_size, stride, pssa_kernel_size)
        self.in_channels, self.stride, self.pssa_kernel_size = in_channels, stride, pssa_kernel_size
        self.shifts = shift_offsets(tuple(shift_lengths))
        self.deployed_conv = nn.Conv2d(in_channels * (1 + len(self.shifts)), out_channels, kernel_size, stride,
                                       kernel_size // 2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Ci, H, W) -> (B, Co, H', W')."""
        return xvolution_deployed_reference(x, self.deployed_conv.weight, self.deployed_conv.bias, self.shifts,
                                            self.stride, self.pssa_kernel_size)


def deployed_xvolution_reference(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                                 shift_lengths: Sequence[int] = (1,),
                                 pssa_kernel_size: int = 1) -> DeployedXVolutionReference:
    """The plain-PyTorch module that loads the state_dict of ``XVolution(<same arguments>)`` once deployed."""
    return DeployedXVolutionReference(in_channels, out_channels, kernel_size, stride, shift_lengths,
                                      pssa_kernel_size)


def to_reference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every deployed XVolution replaced by its plain-PyTorch equal (same weights)."""
    from .nn.xvolution import XVolution

    def convert(m: nn.Module) -> nn.Module:
        if isinstance(m, XVolution):
            if not m.deployed:
                raise ValueError("to_reference needs a deployed model: call translution_ext.reparameterize_model "
                                 "(in eval mode) first")
            plain = deployed_xvolution_reference(m.in_channels, m.out_channels, m.kernel_size, m.stride,
                                                 m.shift_lengths, m.pssa_kernel_size)
            plain.load_state_dict(m.state_dict())
            return plain.to(m.deployed_conv.weight.device, m.deployed_conv.weight.dtype)
        for name, child in m.named_children():
            setattr(m, name, convert(child))
        return m

    return convert(copy.deepcopy(model))
