"""The Translution attention block (spec: translution.md §3)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ..ops.translution_attention import translution_attention
from .functional import attention_weights, pair_scores, project_relative, weighted_sum
from .relative_block import ROLES, RelativeBlock, new_table


class Translution(RelativeBlock):
    """Attention in which every relative offset has its own q/k/v projection.

    For query token i and key token j (per head, scale s = dim_head^-1/2)::

        q_ij = x_i W^q[idx(j, i)],  k_ij = x_j W^k[idx(i, j)],  v_ij = x_j W^v[idx(i, j)]
        y_i  = (sum_j softmax_j(s <q_ij, k_ij>) v_ij) W^o + b^o

    with x the pre-normed input (the block owns its LayerNorm).  Roles not in
    ``relative`` use one shared bias-free Linear (``shared_proj``, q, k, v order).

    Args:
        dim: C, the model width.
        heads, dim_head: H and d; D = H·d.
        layout: "1d", "causal", "2d" or "2d_cls" (class token at index 0).
        max_len: L for the 1D layouts; any input N <= L is accepted.
        grid: (Hg, Wg) for the 2D layouts; forward takes any smaller ``grid``.
        relative: the relative roles, any of "qkv", "qk", "qv", "kv", "q", "k", "v".
        dropout: on the attention weights and the output projection (training only).
        backend: "auto" (the first that can run of the three), "fused" (memory-linear
            kernels: no per-pair tensors; not with attention dropout in training),
            "native" (relative-offset projection kernels) or "reference" (pure PyTorch).

    Parameters: ``q_table``/``k_table``/``v_table`` of shape (R, dim, D) for the
    relative roles, ``shared_proj`` (dim -> n·D) for the others, ``norm``,
    ``out_proj``.
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, layout: str = "1d",
                 max_len: Optional[int] = None, grid: Optional[Tuple[int, int]] = None,
                 relative: str = "qkv", dropout: float = 0.0, backend: str = "auto"):
        super().__init__(dim, heads, dim_head, layout, max_len, grid, relative, dropout, backend)
        self.shared = tuple(r for r in ROLES if r not in self.relative)
        for role in self.relative:
            setattr(self, f"{role}_table", new_table(self.num_classes, dim, self.inner_dim))
        self.shared_proj = (nn.Linear(dim, len(self.shared) * self.inner_dim, bias=False)
                            if self.shared else None)

    def forward(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """x: (B, N, dim) -> (B, N, dim).  ``grid=(h, w)`` for a 2D input smaller than the built grid."""
        h, key_index, query_index, backend = self._prepare(x, grid)
        roles = {}
        if self.shared:
            roles.update(zip(self.shared, self.shared_proj(h).chunk(len(self.shared), dim=-1)))
        if backend == "fused":
            tables = {f"{r}_table": getattr(self, f"{r}_table") for r in self.relative}
            o = translution_attention(h, key_index=key_index, query_index=query_index, heads=self.heads,
                                      scale=self.scale, causal=self.layout.causal, **tables, **roles)
            return self._output(o)
        for role in self.relative:
            table = getattr(self, f"{role}_table")
            if role == "q":
                roles[role] = project_relative(h, table, query_index, "query", backend)
            else:
                roles[role] = project_relative(h, table, key_index, "key", backend)
        scores = pair_scores(roles["q"], roles["k"], self.heads) * self.scale
        attn = attention_weights(scores, self.layout.causal, self.dropout, self.training)
        return self._output(weighted_sum(attn, roles["v"]))
