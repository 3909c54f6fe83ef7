"""What every relative-offset attention block shares: layout, index maps, norm, output."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_number, check_positive_int, check_tokens
from .functional import BACKENDS, resolve_backend
from .layout import TokenLayout

ROLES = ("q", "k", "v")
VARIANTS = ("qkv", "qk", "qv", "kv", "q", "k", "v")


def parse_relative(relative: str) -> Tuple[str, ...]:
    """"qkv", "kv", "QV", ... -> the relative roles in q, k, v order."""
    letters = relative.lower() if isinstance(relative, str) else ""
    if not letters or set(letters) - set(ROLES) or len(set(letters)) != len(letters):
        raise ValueError(f"relative must be a non-empty subset of 'qkv' (one of {', '.join(VARIANTS)}), "
                         f"got {relative!r}")
    return tuple(r for r in ROLES if r in letters)


def init_table_(table: torch.Tensor) -> None:
    """The reference's initialisation of an (R, C, D) table: kaiming_uniform_(a=√5) on the whole tensor."""
    nn.init.kaiming_uniform_(table, a=math.sqrt(5))


def new_table(rows: int, fan_in: int, fan_out: int) -> nn.Parameter:
    """An (R, C, D) table initialised like the reference."""
    table = nn.Parameter(torch.empty(rows, fan_in, fan_out))
    init_table_(table)
    return table


class RelativeBlock(nn.Module):
    """Base of :class:`Translution` and :class:`AlphaTranslution`.

    Holds the pre-norm, the layout with its (non-persistent) full-size index
    maps, the output projection (omitted when heads == 1 and dim_head == dim, as
    in the reference) and the backend choice.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, layout: str, max_len: Optional[int],
                 grid: Optional[Tuple[int, int]], relative: str, dropout: float, backend: str):
        super().__init__()
        for name, value in (("dim", dim), ("heads", heads), ("dim_head", dim_head)):
            check_positive_int(name, value)
        check_number("dropout", dropout, 0.0, 1.0, high_inclusive=False)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        self.dim, self.heads, self.dim_head = dim, heads, dim_head
        self.inner_dim = heads * dim_head
        self.scale = dim_head ** -0.5
        self.dropout = dropout
        self.backend = backend
        self.relative = parse_relative(relative)
        self.layout = TokenLayout(layout, max_len=max_len, grid=grid)
        full = self._full_index()
        self.register_buffer("key_index", full.key, persistent=False)
        self.register_buffer("query_index", full.query, persistent=False)
        self.norm = nn.LayerNorm(dim)
        self.project_out = not (heads == 1 and dim_head == dim)
        self.out_proj = nn.Linear(self.inner_dim, dim) if self.project_out else nn.Identity()

    @property
    def num_classes(self) -> int:
        """R, the rows of every offset table."""
        return self.layout.num_classes

    def _full_index(self, device=None):
        return self.layout.index(self.layout.grid if self.layout.is_2d else (self.layout.max_len,), device=device)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialises this block's own tables and rebuilds its index maps in place (submodules have
        their own ``reset_parameters``).  The index maps are non-persistent buffers: a block built on
        the meta device and materialised with ``to_empty()`` needs this (see
        :func:`translution_ext.models.init_weights`)."""
        for role in self.relative:
            init_table_(getattr(self, f"{role}_table"))
        full = self._full_index(self.key_index.device)
        self.key_index.copy_(full.key)
        self.query_index.copy_(full.query)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, dim_head={self.dim_head}, {self.layout.describe()}, "
                f"relative={''.join(self.relative)!r}, dropout={self.dropout}, backend={self.backend!r}")

    def _prepare(self, x: torch.Tensor, grid: Optional[Tuple[int, int]]):
        """Checks x and returns (normed x, key index, query index, resolved backend)."""
        check_tokens(x, self.dim, self.norm.weight, f"{type(self).__name__} block")
        n = x.shape[1]
        size = self.layout.size_of(n, grid)
        if self.layout.is_2d and tuple(size) != self.layout.grid:
            index = self.layout.index(size, device=x.device)
            key, query = index.key, index.query
        else:  # the 1D maps of a shorter sequence are the leading block of the full maps
            key, query = self.key_index[:n, :n], self.query_index[:n, :n]
        dropout_active = self.training and self.dropout > 0
        dtype = x.dtype
        if x.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
            dtype = torch.get_autocast_dtype("cuda")
        backend = resolve_backend(self.backend, x.device, dropout_active, (dtype, *self._fused_widths()))
        return self.norm(x), key, query, backend

    def _fused_widths(self) -> Tuple[int, int]:
        """The per-head widths (q and k, v) of the fused attention call (an upper bound)."""
        return self.dim_head, self.dim_head

    def _output(self, o: torch.Tensor) -> torch.Tensor:
        if not self.project_out:
            return o
        y = self.out_proj(o)
        return F.dropout(y, self.dropout, self.training) if self.dropout > 0 else y
