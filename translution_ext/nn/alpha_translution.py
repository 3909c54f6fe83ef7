"""α-Translution, the lightweight relative branch beside ordinary attention (spec §4)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .._checks import check_number, check_positive_int
from ..ops.translution_attention import translution_attention
from .functional import attention_weights, combine_scores, pair_scores, project_relative, weighted_sum
from .relative_block import RelativeBlock, new_table


def _concat_heads(a: torch.Tensor, b: torch.Tensor, heads: int) -> torch.Tensor:
    """Per head [a | b]: (B, N, H·da), (B, N, H·db) -> (B, N, H·(da + db))."""
    return torch.cat([a.unflatten(-1, (heads, -1)), b.unflatten(-1, (heads, -1))], dim=-1).flatten(-2)


class AlphaTranslution(RelativeBlock):
    """α-Translution (the reference code calls it LoR-Translution).

    With E = heads·dim_relenc and the pre-normed x::

        [q1 | k1 | v1] = x W^qkv                    (ordinary attention, no bias)
        u^r  = x A^r                                (dim -> E, no bias)
        q2_ij = u^q_i T^q[idx(j, i)],  k2_ij = u^k_j T^k[idx(i, j)],  v2_ij = u^v_j T^v[idx(i, j)]
        scores = s ((1 − α) <q1_i, k1_j> + α <q2_ij, k2_ij>)
        o_i  = (1 − α) sum_j a_ij v1_j + α (sum_j a_ij v2_ij) U
        y_i  = o_i W^o + b^o

    α = 0.5 is the reference.  A role outside ``relative`` has no T table (q2 =
    u^q_i, k2 = u^k_j); without relative q and k there is no second score term,
    and without relative v there is no v2, U or α on the output.

    Args:
        dim, heads, dim_head, layout, max_len, grid, relative, dropout, backend:
            as for :class:`Translution` (the fused backend runs both branches in
            one memory-linear softmax).
        dim_relenc: e, the per-head width of the relative branch (E = heads·e).
        alpha: the weight of the relative branch, in [0, 1].

    Parameters: ``qkv_proj`` (dim -> 3D); ``q_relenc``/``k_relenc`` (dim -> E,
    when q or k is relative); ``v_relenc`` (dim -> E) and ``v_relenc_out``
    (E -> D, the U) when v is relative; tables ``q_table``/``k_table``/
    ``v_table`` of shape (R, E, E) that mix heads; ``norm``; ``out_proj``.
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, layout: str = "1d",
                 max_len: Optional[int] = None, grid: Optional[Tuple[int, int]] = None,
                 relative: str = "qkv", dropout: float = 0.0, backend: str = "auto",
                 dim_relenc: int = 16, alpha: float = 0.5):
        super().__init__(dim, heads, dim_head, layout, max_len, grid, relative, dropout, backend)
        check_positive_int("dim_relenc", dim_relenc)
        self.dim_relenc = dim_relenc
        self.alpha = check_number("alpha", alpha, 0.0, 1.0, high_inclusive=True)
        rel_dim = heads * dim_relenc
        self.qkv_proj = nn.Linear(dim, 3 * self.inner_dim, bias=False)
        self.relative_scores = "q" in self.relative or "k" in self.relative
        if self.relative_scores:
            self.q_relenc = nn.Linear(dim, rel_dim, bias=False)
            self.k_relenc = nn.Linear(dim, rel_dim, bias=False)
        if "v" in self.relative:
            self.v_relenc = nn.Linear(dim, rel_dim, bias=False)
            self.v_relenc_out = nn.Linear(rel_dim, self.inner_dim, bias=False)
        for role in self.relative:
            setattr(self, f"{role}_table", new_table(self.num_classes, rel_dim, rel_dim))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dim_relenc={self.dim_relenc}, alpha={self.alpha}"

    def _fused(self, h: torch.Tensor, key_index: torch.Tensor, query_index: torch.Tensor) -> torch.Tensor:
        """Both branches in one fused softmax: per head q = [(1 − α) q1 | α q2], k = [k1 | k2], v = [v1 | v2]."""
        q1, k1, v1 = self.qkv_proj(h).chunk(3, dim=-1)
        a, heads = self.alpha, self.heads
        args = dict(q=(1 - a) * q1, k=k1, v=v1)
        if self.relative_scores:
            uq, uk = a * self.q_relenc(h), self.k_relenc(h)
            if "q" in self.relative:
                args.update(q_table=self.q_table, q_source=uq)
            else:
                args["q"] = _concat_heads(args["q"], uq, heads)
            if "k" in self.relative:
                args.update(k_table=self.k_table, k_source=uk)
            else:
                args["k"] = _concat_heads(k1, uk, heads)
        else:  # no relative score term: ordinary scores, no (1 − α)
            args["q"] = q1
        if "v" in self.relative:
            args.update(v_table=self.v_table, v_source=self.v_relenc(h))
        o = translution_attention(key_index=key_index, query_index=query_index, heads=heads, scale=self.scale,
                                  causal=self.layout.causal, **args)
        if "v" not in self.relative:
            return o
        o1, o2 = o.unflatten(-1, (heads, -1)).split([self.dim_head, self.dim_relenc], dim=-1)
        return (1 - a) * o1.flatten(-2) + a * self.v_relenc_out(o2.flatten(-2))

    def _fused_widths(self) -> Tuple[int, int]:
        # Plain and relative branch side by side in one softmax (when both are present).
        return self.dim_head + self.dim_relenc, self.dim_head + self.dim_relenc

    def forward(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """x: (B, N, dim) -> (B, N, dim).  ``grid=(h, w)`` for a 2D input smaller than the built grid."""
        h, key_index, query_index, backend = self._prepare(x, grid)
        if backend == "fused":
            return self._output(self._fused(h, key_index, query_index))
        q1, k1, v1 = self.qkv_proj(h).chunk(3, dim=-1)
        relative_term = None
        if self.relative_scores:
            q2, k2 = self.q_relenc(h), self.k_relenc(h)
            if "q" in self.relative:
                q2 = project_relative(q2, self.q_table, query_index, "query", backend)
            if "k" in self.relative:
                k2 = project_relative(k2, self.k_table, key_index, "key", backend)
            relative_term = pair_scores(q2, k2, self.heads)
        scores = combine_scores(pair_scores(q1, k1, self.heads), relative_term, self.alpha) * self.scale
        attn = attention_weights(scores, self.layout.causal, self.dropout, self.training)
        o = weighted_sum(attn, v1)
        if "v" in self.relative:
            v2 = project_relative(self.v_relenc(h), self.v_table, key_index, "key", backend)
            o = (1 - self.alpha) * o + self.alpha * self.v_relenc_out(weighted_sum(attn, v2))
        return self._output(o)
