"""Pre-norm residual blocks shared by the ViT and GPT models (spec §5)."""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn

from .._checks import check_number, check_positive_int, check_tokens
from ..nn import AlphaTranslution, Attention, Translution

MIXERS = ("translution", "alpha", "attention")


class FeedForward(nn.Module):
    """LayerNorm -> Linear(dim, hidden) -> GELU -> Dropout -> Linear(hidden, dim) -> Dropout."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("hidden_dim", hidden_dim)
        check_number("dropout", dropout, 0.0, 1.0, high_inclusive=False)
        self.dim = dim
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, dim) -> (B, N, dim)."""
        check_tokens(x, self.dim, self.net[0].weight, "FeedForward block")
        return self.net(x)


class Block(nn.Module):
    """x = mixer(x) + x; x = ff(x) + x.  Both sub-layers carry their own LayerNorm."""

    def __init__(self, mixer: nn.Module, ff: FeedForward):
        super().__init__()
        for name, module in (("mixer", mixer), ("ff", ff)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(module).__name__}")
        self.mixer, self.ff = mixer, ff

    def forward(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """x: (B, N, dim) -> (B, N, dim); ``grid`` is passed to the mixer (2D inputs smaller than built)."""
        x = self.mixer(x, grid=grid) + x
        return self.ff(x) + x


def make_mixer(mixer: str, *, dim: int, heads: int, dim_head: int, dropout: float, layout: str,
               size, relative: str, dim_relenc: int, alpha: float, backend: str) -> nn.Module:
    """The token mixer of one block: Translution, α-Translution or ordinary attention.

    ``size`` is max_len for the 1D layouts and (Hg, Wg) for the 2D ones.
    """
    if mixer not in MIXERS:
        raise ValueError(f"mixer must be one of {', '.join(map(repr, MIXERS))}, got {mixer!r}")
    if mixer == "attention":
        return Attention(dim, heads, dim_head, dropout, causal=layout == "causal")
    where = dict(grid=tuple(size)) if layout.startswith("2d") else dict(max_len=size)
    common = dict(heads=heads, dim_head=dim_head, layout=layout, relative=relative, dropout=dropout,
                  backend=backend, **where)
    if mixer == "alpha":
        return AlphaTranslution(dim, dim_relenc=dim_relenc, alpha=alpha, **common)
    return Translution(dim, **common)


def check_tln_num(tln_num: Optional[int], depth: int) -> int:
    """The number of leading relative blocks (all of them when tln_num is None)."""
    if tln_num is None:
        return depth
    if not isinstance(tln_num, int) or not 0 <= tln_num <= depth:
        raise ValueError(f"tln_num must be an int in [0, depth={depth}], got {tln_num!r}")
    return tln_num


def stack_blocks(depth: int, tln_num: int, relative_mixer: Callable[[], nn.Module],
                 plain_mixer: Callable[[], nn.Module], dim: int, mlp_dim: int, dropout: float) -> nn.ModuleList:
    """``depth`` blocks: the first ``tln_num`` mix tokens with ``relative_mixer()``, the rest ``plain_mixer()``."""
    return nn.ModuleList(
        Block(relative_mixer() if i < tln_num else plain_mixer(), FeedForward(dim, mlp_dim, dropout))
        for i in range(depth))
