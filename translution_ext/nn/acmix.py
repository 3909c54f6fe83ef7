"""ACmix, ResNet form: shared 1x1 projections feeding local window attention and a shift convolution.

Spec: acmix.md.  y = rate1 · attention(q, k, v) + rate2 · conv(q, k, v).
"""
from __future__ import annotations

import torch
from torch import nn

from .._checks import check_image, check_positive_int, check_positive_odd_int, is_int
from ..ops.acmix_window_attention import acmix_window_attention


def position_grid(h: int, w: int, device=None, dtype=None) -> torch.Tensor:
    """(1, 2, H, W): channel 0 = linspace(−1, 1, W) along columns, channel 1 = linspace(−1, 1, H) along rows."""
    cols = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype)[None, :].expand(h, w)
    rows = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype)[:, None].expand(h, w)
    return torch.stack([cols, rows])[None]


class ACmix(nn.Module):
    """ACmix block (ResNet/SAN form).

    Args:
        in_planes, out_planes: Cin and C (C divisible by head).
        kernel_att: the attention window ka (odd).
        head: Nh; hd = C / Nh.
        kernel_conv: kc of the shift convolution (odd).
        stride: 1 or 2.

    Parameters: ``q_proj``/``k_proj``/``v_proj`` (1x1 convs with bias), ``pe_proj`` (1x1 conv
    2 -> hd), ``fc`` (1x1 conv 3·Nh -> kc², no bias), ``dep_conv`` (grouped kc x kc conv,
    shift-initialised, no bias), ``rate1``, ``rate2`` (0.5 at init).

    forward: (B, Cin, H, W) -> (B, C, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, in_planes: int, out_planes: int, kernel_att: int = 7, head: int = 4, kernel_conv: int = 3,
                 stride: int = 1):
        super().__init__()
        for name, value in (("in_planes", in_planes), ("out_planes", out_planes), ("head", head)):
            check_positive_int(name, value)
        if out_planes % head:
            raise ValueError(f"out_planes must be divisible by head = {head}, got {out_planes}")
        for name, k in (("kernel_att", kernel_att), ("kernel_conv", kernel_conv)):
            check_positive_odd_int(name, k)
        if not is_int(stride) or stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.in_planes, self.out_planes, self.head = in_planes, out_planes, head
        self.kernel_att, self.kernel_conv, self.stride = kernel_att, kernel_conv, stride
        self.head_dim = out_planes // head
        self.q_proj = nn.Conv2d(in_planes, out_planes, 1)
        self.k_proj = nn.Conv2d(in_planes, out_planes, 1)
        self.v_proj = nn.Conv2d(in_planes, out_planes, 1)
        self.pe_proj = nn.Conv2d(2, self.head_dim, 1)
        self.fc = nn.Conv2d(3 * head, kernel_conv * kernel_conv, 1, bias=False)
        self.dep_conv = nn.Conv2d(kernel_conv * kernel_conv * self.head_dim, out_planes, kernel_conv,
                                  stride=stride, padding=kernel_conv // 2, groups=self.head_dim, bias=False)
        self.rate1 = nn.Parameter(torch.full((1,), 0.5))
        self.rate2 = nn.Parameter(torch.full((1,), 0.5))
        with torch.no_grad():  # every group starts as the kc² shifts: tap i copies input channel i
            taps = kernel_conv * kernel_conv
            shift = torch.zeros(taps, kernel_conv, kernel_conv)
            for i in range(taps):
                shift[i, i // kernel_conv, i % kernel_conv] = 1.0
            self.dep_conv.weight.copy_(shift.repeat(out_planes, 1, 1, 1))

    def extra_repr(self) -> str:
        return (f"{self.in_planes}, {self.out_planes}, kernel_att={self.kernel_att}, head={self.head}, "
                f"kernel_conv={self.kernel_conv}, stride={self.stride}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Cin, H, W) -> (B, C, ceil(H / stride), ceil(W / stride))."""
        check_image(x, self.in_planes, self.q_proj.weight, "ACmix block")
        b, _, h, w = x.shape
        pad = self.kernel_att // 2
        if pad >= h or pad >= w:
            raise ValueError(f"x's height and width must exceed kernel_att // 2 = {pad} (reflection padding), "
                             f"got {(h, w)}")
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        pe = self.pe_proj(position_grid(h, w, x.device, x.dtype))
        out_att = acmix_window_attention(q, k, v, pe, self.head, self.kernel_att, self.stride)
        # Conv path: the 3·Nh maps of every head slice d mixed into kc² shift inputs, then grouped by d.
        z = torch.cat([t.reshape(b, self.head, self.head_dim, h * w) for t in (q, k, v)], dim=1)
        # fc, a 1x1 conv over only 3·Nh channels, as one matmul (as a convolution it is slow on CPU):
        # (b, kc², hd, h·w), then channel d·kc² + i of dep_conv's input.
        taps = self.kernel_conv * self.kernel_conv
        f = torch.matmul(self.fc.weight.view(taps, 3 * self.head), z.reshape(b, 3 * self.head, -1))
        f = f.view(b, taps, self.head_dim, h, w)
        if x.device.type == "cpu":  # oneDNN's grouped convolution is several times faster channels-last
            f = f.permute(0, 3, 4, 2, 1).reshape(b, h, w, -1).permute(0, 3, 1, 2)
            out_conv = self.dep_conv(f).contiguous()
        else:
            out_conv = self.dep_conv(f.transpose(1, 2).reshape(b, -1, h, w))
        return self.rate1 * out_att + self.rate2 * out_conv
