"""Ordinary multi-head attention, optionally causal or with 2D rotary position embedding.

The layers of a hybrid model that are not Translution (spec §5) use it, with the
same pre-norm and output projection as the Translution blocks.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int_pair, check_number, check_positive_int, check_tokens
from .layout import TokenLayout


class RotaryEmbedding2D(nn.Module):
    """2D RoPE over a row-major grid; a leading class token is left unrotated.

    The first half of each head's frequencies encodes the row, the second half
    the column (base 10000); channel c pairs with c + d/2 (rotate-half form).

    Args:
        dim_head: d, divisible by 4.
        grid: (Hg, Wg), the largest grid; smaller grids use its top-left corner.
        cls_token: whether token 0 is a class token.
    """

    def __init__(self, dim_head: int, grid: Tuple[int, int], cls_token: bool = True, base: float = 10000.0):
        super().__init__()
        check_positive_int("dim_head", dim_head)
        if dim_head % 4:
            raise ValueError(f"dim_head must be divisible by 4 for 2D RoPE, got {dim_head}")
        self.grid, self.cls_token = check_int_pair("grid", grid, "(Hg, Wg)"), cls_token
        if isinstance(base, bool) or not isinstance(base, (int, float)) or base <= 1:
            raise ValueError(f"base must be a number > 1, got {base!r}")
        self.dim_head, self.base = dim_head, base
        angles = self._angles()
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def _angles(self, device=None) -> torch.Tensor:
        """(Hg, Wg, d) rotation angles, float32 like the reference."""
        half = self.dim_head // 2
        inv_freq = 1.0 / (self.base ** (torch.arange(0, half, 2, device=device).float() / half))
        rows = torch.arange(self.grid[0], device=device).float()[:, None, None] * inv_freq
        cols = torch.arange(self.grid[1], device=device).float()[None, :, None] * inv_freq
        freqs = torch.cat([rows.expand(*self.grid, -1), cols.expand(*self.grid, -1)], dim=-1)  # (Hg, Wg, d/2)
        return torch.cat([freqs, freqs], dim=-1)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Rebuilds the cos/sin tables in place: they are non-persistent buffers, which a module built on
        the meta device and materialised with ``to_empty()`` does not have."""
        angles = self._angles(self.cos.device)
        self.cos.copy_(angles.cos())
        self.sin.copy_(angles.sin())

    def forward(self, t: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """t: (B, H, N, d) with N = h·w (+1) -> the rotated t."""
        h, w = check_int_pair("size", size, "(h, w)")
        if h > self.grid[0] or w > self.grid[1]:
            raise ValueError(f"size must be <= {self.grid} (the grid this embedding was built for), got {(h, w)}")
        n = h * w + int(self.cls_token)
        if t.dim() < 2 or t.shape[-2] != n:
            raise ValueError(f"t must have shape (..., N, d) with N = h*w{' + 1' if self.cls_token else ''} = {n} "
                             f"for size={(h, w)}, got {tuple(t.shape)}")
        cos = self.cos[:h, :w].reshape(h * w, -1).to(t.dtype)
        sin = self.sin[:h, :w].reshape(h * w, -1).to(t.dtype)
        head, grid_tokens = (t[..., :1, :], t[..., 1:, :]) if self.cls_token else (None, t)
        x1, x2 = grid_tokens.chunk(2, dim=-1)
        rotated = grid_tokens * cos + torch.cat([-x2, x1], dim=-1) * sin
        return rotated if head is None else torch.cat([head, rotated], dim=-2)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention (scaled dot product, softmax).

    Args:
        dim, heads, dim_head, dropout: as for :class:`translution_ext.nn.Translution`.
        causal: mask keys after the query (GPT).
        rope_grid: (Hg, Wg) to apply 2D RoPE to q and k (ViT hybrid layers).
        cls_token: with ``rope_grid``, whether token 0 is a class token.

    Parameters: ``norm``, ``qkv_proj`` (dim -> 3D, no bias), ``out_proj``
    (omitted when heads == 1 and dim_head == dim).
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0,
                 causal: bool = False, rope_grid: Optional[Tuple[int, int]] = None, cls_token: bool = True):
        super().__init__()
        for name, value in (("dim", dim), ("heads", heads), ("dim_head", dim_head)):
            check_positive_int(name, value)
        check_number("dropout", dropout, 0.0, 1.0, high_inclusive=False)
        self.dim = dim
        self.heads, self.dim_head, self.dropout, self.causal = heads, dim_head, dropout, causal
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.qkv_proj = nn.Linear(dim, 3 * inner, bias=False)
        self.rope = RotaryEmbedding2D(dim_head, rope_grid, cls_token) if rope_grid is not None else None
        # RoPE positions tokens on a grid: the input size is validated like a Translution block's.
        self.layout = TokenLayout("2d_cls" if cls_token else "2d", grid=rope_grid) if self.rope is not None else None
        self.project_out = not (heads == 1 and dim_head == dim)
        self.out_proj = nn.Linear(inner, dim) if self.project_out else nn.Identity()

    def forward(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """x: (B, N, dim) -> (B, N, dim); ``grid=(h, w)`` when RoPE runs on a smaller grid."""
        check_tokens(x, self.dim, self.norm.weight, "Attention block")
        if self.layout is not None:
            size = self.layout.size_of(x.shape[1], grid)
        q, k, v = (t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)
                   for t in self.qkv_proj(self.norm(x)).chunk(3, dim=-1))
        if self.rope is not None:
            q, k = self.rope(q, size), self.rope(k, size)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        y = self.out_proj(out.transpose(1, 2).flatten(-2))
        return F.dropout(y, self.dropout, self.training) if self.project_out and self.dropout > 0 else y
