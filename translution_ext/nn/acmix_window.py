"""ACmix, Swin form: window attention with relative position bias beside a shift convolution.

Spec: acmix.md ("Swin form").  The module follows the reference's interface: forward takes a
(B, H, W, C) map (already cyclically rolled for shifted windows) and an optional (nW, N, N)
mask, e.g. from :func:`shifted_window_mask`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._checks import check_like_parameters, check_number, check_positive_int, check_tensor


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B·nW, window, window, C), windows in row-major order."""
    b, h, w, c = x.shape
    return x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """(B·nW, window, window, C) -> (B, H, W, C)."""
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """(nW, N, N) additive mask of shifted-window attention: −100 between tokens of different regions.

    h, w: the map, multiples of ``window``; shift: the cyclic shift, 0 < shift < window.
    nW = (h / window)·(w / window), N = window².
    """
    for name, value in (("h", h), ("w", w), ("window", window), ("shift", shift)):
        check_positive_int(name, value)
    if h % window or w % window:
        raise ValueError(f"h and w must be multiples of window = {window}, got {h} x {w}")
    if shift >= window:
        raise ValueError(f"shift must be in [1, window) = [1, {window}), got {shift}")
    regions = torch.zeros(1, h, w, 1)
    count = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            regions[:, hs, ws, :] = count
            count += 1
    ids = window_partition(regions, window).view(-1, window * window)
    diff = ids[:, None, :] - ids[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class ACmixWindowAttention(nn.Module):
    """Swin window attention + ACmix shift convolution, y = rate1 · proj(attention) + rate2 · conv.

    Args:
        dim: C.  window_size: M (square windows).  num_heads: Nh.
        qkv_bias: bias of the shared Linear(C, 3C).  qk_scale: default hd^-1/2.
        attn_drop, proj_drop: dropout of the attention weights and of the output.

    Parameters (the reference's names): ``qkv``, ``proj``, ``relative_position_bias_table``
    ((2M − 1)², Nh), ``fc`` (1x1 conv 3·Nh -> 9 with bias), ``dep_conv`` (grouped 3x3,
    shift-initialised, no bias), ``rate1``, ``rate2``.

    forward: x (B, H, W, C) with H, W multiples of M, mask (nW, M², M²) or None -> (B, H, W, C).
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        for name, value in (("dim", dim), ("window_size", window_size), ("num_heads", num_heads)):
            check_positive_int(name, value)
        if qk_scale is not None and (isinstance(qk_scale, bool) or not isinstance(qk_scale, (int, float))):
            raise TypeError(f"qk_scale must be a number or None, got {qk_scale!r}")
        for name, value in (("attn_drop", attn_drop), ("proj_drop", proj_drop)):
            check_number(name, value, 0.0, 1.0, high_inclusive=False)
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads = {num_heads}, got {dim}")
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        m = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * m - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(m), torch.arange(m), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (m - 1)  # (M², M², 2)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * m - 1) + rel[..., 1])
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.fc = nn.Conv2d(3 * num_heads, 9, 1, bias=True)
        self.dep_conv = nn.Conv2d(9 * self.head_dim, dim, 3, padding=1, groups=self.head_dim, bias=False)
        self.rate1 = nn.Parameter(torch.full((1,), 0.5))
        self.rate2 = nn.Parameter(torch.full((1,), 0.5))
        with torch.no_grad():  # tap i of every group copies its input channel i: the 9 shifts
            shift = torch.zeros(9, 3, 3)
            for i in range(9):
                shift[i, i // 3, i % 3] = 1.0
            self.dep_conv.weight.copy_(shift.repeat(dim, 1, 1, 1))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"

    def _check_mask(self, mask: torch.Tensor, x: torch.Tensor) -> None:
        """The shifted-window mask must have one (M², M²) map per window of x."""
        m = self.window_size
        nw = (x.shape[1] // m) * (x.shape[2] // m)
        check_tensor("mask", mask)
        if tuple(mask.shape) != (nw, m * m, m * m):
            raise ValueError(f"mask must have shape (nW, M², M²) = {(nw, m * m, m * m)} for x of shape "
                             f"{tuple(x.shape)} (e.g. shifted_window_mask(H, W, {m}, shift)), got {tuple(mask.shape)}")
        if mask.device != x.device:
            raise ValueError(f"mask must be on x's device ({x.device}), got {mask.device}")

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, H, W, dim), H and W multiples of the window; mask: (nW, M², M²) additive (0 / -100)
        for shifted windows, or None -> (B, H, W, dim)."""
        m, nh, hd = self.window_size, self.num_heads, self.head_dim
        fits = isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[3] == self.dim
        if not fits or x.shape[1] % m or x.shape[2] % m:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, H, W, {self.dim}) with H and W multiples of window_size = {m}, "
                             f"got {shape}")
        check_like_parameters("x", x, self.qkv.weight, "ACmixWindowAttention block")
        b, h, w, c = x.shape
        if mask is not None:
            self._check_mask(mask, x)
        qkv = self.qkv(x)
        # Conv path on the whole map: the 3·Nh maps of each head slice d -> 9 shift inputs, grouped by d.
        f_all = qkv.reshape(b, h * w, 3 * nh, hd).permute(0, 2, 1, 3)           # (B, 3Nh, HW, hd)
        f_conv = self.fc(f_all).permute(0, 3, 1, 2).reshape(b, 9 * hd, h, w)     # channel d·9 + i
        out_conv = self.dep_conv(f_conv).permute(0, 2, 3, 1)
        # Window attention with the relative position bias (and the shifted-window mask).
        windows = window_partition(qkv, m).view(-1, m * m, 3, nh, hd).permute(2, 0, 3, 1, 4)
        q, k, v = windows[0] * self.scale, windows[1], windows[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(m * m, m * m, nh)
        attn = attn + bias.permute(2, 0, 1)[None]
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(-1, nw, nh, m * m, m * m) + mask[None, :, None]).view(-1, nh, m * m, m * m)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = self.proj((attn @ v).transpose(1, 2).reshape(-1, m * m, c))
        out = window_reverse(out.view(-1, m, m, c), m, h, w)
        return self.proj_drop(self.rate1 * out + self.rate2 * out_conv)
