"""The fused, memory-linear Translution attention op: Python entry, fake kernels, autograd."""
from __future__ import annotations

from typing import Optional

import torch

from . import _native
from .reference import relative_offset_projection_by_class

_OP = "translution_attention: "


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _unfused(x, tables, shared, key_index, query_index, heads, scale, causal):
    """The same attention through per-pair tensors (pure PyTorch; devices without the fused kernels)."""
    from .nn.functional import attention_weights, pair_scores, weighted_sum

    roles = []
    for role, table, given in zip("qkv", tables, shared):
        if (table is None) == (given is None):
            raise ValueError(f"{_OP}exactly one of {role}_table and {role} must be given")
        if table is None:
            roles.append(given)
        else:
            index, side = (query_index, "query") if role == "q" else (key_index, "key")
            roles.append(relative_offset_projection_by_class(x, table, index, side))
    attn = attention_weights(pair_scores(roles[0], roles[1], heads) * scale, causal, 0.0, False)
    return weighted_sum(attn, roles[2])


def translution_attention(
    x: torch.Tensor, *, key_index: torch.Tensor, query_index: torch.Tensor, heads: int,
    q_table: Optional[torch.Tensor] = None, k_table: Optional[torch.Tensor] = None,
    v_table: Optional[torch.Tensor] = None, q: Optional[torch.Tensor] = None,
    k: Optional[torch.Tensor] = None, v: Optional[torch.Tensor] = None,
    scale: Optional[float] = None, causal: bool = False,
) -> torch.Tensor:
    """Translution attention without per-pair tensors (spec: translution.md §3).

    For every role give either its table (relative) or its per-token tensor (shared)::

        q_ij = x_i q_table[query_index[i, j]]  or  q_i
        k_ij = x_j k_table[key_index[i, j]]    or  k_j      (v likewise)
        o_i  = sum_j softmax_j(scale <q_ij, k_ij>) v_ij     (per head; j <= i when causal)

    Args:
        x: (B, N, C) tokens the tables project.
        key_index, query_index: (N, N) offset classes, e.g. from :mod:`translution_ext.indexing`.
        heads: H; D = H·d.
        q_table, k_table, v_table: (R, C, D) tables of the relative roles.
        q, k, v: (B, N, D) vectors of the shared roles.
        scale: default d^-1/2.
        causal: mask keys j > i.

    Returns:
        (B, N, D), differentiable in x, the tables and the shared roles.  Extra memory
        is O(B·H·N) plus a per-thread block of scores, never O(N²·D).  Devices without
        the fused kernels compute the same result through per-pair tensors.
    """
    tables, shared = (q_table, k_table, v_table), (q, k, v)
    d = next(t.shape[-1] for t in tables + shared if t is not None) // heads
    scale = d ** -0.5 if scale is None else float(scale)
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x = x.to(dtype)
        tables = tuple(None if t is None else t.to(dtype) for t in tables)
        shared = tuple(None if t is None else t.to(dtype) for t in shared)
    if x.device.type not in _native.FUSED_DEVICE_TYPES:
        return _unfused(x, tables, shared, key_index, query_index, heads, scale, causal)
    out, _ = torch.ops.translution_ext.translution_attention(
        x, *tables, *shared, key_index, query_index, heads, scale, causal)
    return out


def _register() -> None:
    lib = "translution_ext::"

    @torch.library.register_fake(lib + "translution_attention")
    def _(x, q_table, k_table, v_table, q, k, v, key_index, query_index, heads, scale, causal):
        d_total = next(t.shape[-1] for t in (q_table, k_table, v_table, q, k, v) if t is not None)
        out = x.new_empty((x.shape[0], x.shape[1], d_total))
        lse = x.new_empty((x.shape[0], heads, x.shape[1]), dtype=_opmath(x.dtype))
        return out, lse

    @torch.library.register_fake(lib + "translution_attention_backward")
    def _(grad_out, x, q_table, k_table, v_table, q, k, v, key_index, query_index, out, lse, heads, scale,
          causal):
        empty = x.new_empty((0,))
        grads = [torch.empty_like(x)]
        grads += [empty if t is None else torch.empty_like(t) for t in (q_table, k_table, v_table)]
        grads += [empty if t is not None else torch.empty_like(grad_out) for t in (q_table, k_table, v_table)]
        return tuple(grads)

    def setup_context(ctx, inputs, output):
        x, qt, kt, vt, q, k, v, key_index, query_index, heads, scale, causal = inputs
        out, lse = output
        ctx.meta = (heads, scale, causal)
        ctx.save_for_backward(x, qt, kt, vt, q, k, v, key_index, query_index, out, lse)

    def backward(ctx, grad_out, _grad_lse):
        x, qt, kt, vt, q, k, v, key_index, query_index, out, lse = ctx.saved_tensors
        heads, scale, causal = ctx.meta
        grads = torch.ops.translution_ext.translution_attention_backward(
            grad_out.contiguous(), x, qt, kt, vt, q, k, v, key_index, query_index, out, lse, heads, scale, causal)
        given = (x, qt, kt, vt, q, k, v)
        result = [g if t is not None and ctx.needs_input_grad[i] else None
                  for i, (g, t) in enumerate(zip(grads, given))]
        return (*result, None, None, None, None, None)

    torch.library.register_autograd(lib + "translution_attention", backward, setup_context=setup_context)


if _native.FUSED_DEVICE_TYPES:
    _register()
