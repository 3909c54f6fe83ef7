"""ResNet bottleneck with ACmix in place of the 3x3 convolution."""
from __future__ import annotations

import torch
from torch import nn

from .._checks import check_image, check_positive_int
from .acmix import ACmix


class ACmixBottleneck(nn.Module):
    """1x1 conv -> BN -> ReLU -> ACmix (stride) -> BN -> ReLU -> 1x1 conv -> BN, plus the shortcut, ReLU.

    Args:
        in_planes: input channels.
        planes: the bottleneck width (ACmix runs at this width); output = planes · expansion.
        stride: 1 or 2 (applied by ACmix; the shortcut projects when stride or width changes).
        kernel_att, head, kernel_conv: ACmix's window, heads and shift-conv kernel.
        expansion: output width multiplier (4 in ResNet-50).

    forward: (B, in_planes, H, W) -> (B, planes·expansion, ceil(H/stride), ceil(W/stride)).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, kernel_att: int = 7, head: int = 4,
                 kernel_conv: int = 3, expansion: int = 4):
        super().__init__()
        for name, value in (("in_planes", in_planes), ("planes", planes), ("expansion", expansion)):
            check_positive_int(name, value)
        out = planes * expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.acmix = ACmix(planes, planes, kernel_att, head, kernel_conv, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (nn.Sequential(nn.Conv2d(in_planes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
                         if stride != 1 or in_planes != out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_planes, H, W) -> (B, 4·planes, ceil(H / stride), ceil(W / stride))."""
        check_image(x, self.conv1.in_channels, self.conv1.weight, "ACmixBottleneck block")
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.acmix(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + self.shortcut(x))
