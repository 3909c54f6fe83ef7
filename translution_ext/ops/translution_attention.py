"""The fused, memory-linear Translution attention op: Python entry, pure-PyTorch reference,
fake kernels, autograd.

C++: csrc/translution_attention.{h,cpp} (schemas, checks, pair groups), the CPU kernels
csrc/cpu/translution_attention_{forward,backward}_cpu.cpp (registered by
csrc/cpu/translution_attention_cpu.cpp) and the CUDA kernels (csrc/cuda/translution_attention_*).

The reference (:func:`translution_attention_reference`) builds the per-pair tensors;
its arithmetic (:func:`pair_scores`, :func:`attention_weights`, :func:`weighted_sum`)
is also what the Translution blocks use when they run unfused.
"""
from __future__ import annotations

from typing import Optional

import torch

import torch.nn.functional as F

from .. import _native
from .._autocast import autocast_inputs
from .._checks import check_float_dtype, check_positive_int, check_tensor
from .relative_offset_projection import relative_offset_projection_by_class

_OP = "translution_attention: "


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


ROLES = ("q", "k", "v")


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., H·d) -> (..., H, d)."""
    return t.unflatten(-1, (heads, t.shape[-1] // heads))


def pair_scores(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """<q_ij, k_ij> per head: (B, H, N, N) from shared or relative q and k."""
    check_positive_int("heads", heads)
    for name, t in (("q", q), ("k", k)):
        if t.shape[-1] % heads:
            raise ValueError(f"{name}.size(-1) must be a multiple of heads == {heads}, got {tuple(t.shape)}")
    if q.dim() == 3 and k.dim() == 3:  # both shared: an ordinary batched GEMM
        return torch.einsum("bihd,bjhd->bhij", _heads(q, heads), _heads(k, heads))
    # A relative operand makes this a per-pair dot product: memory-bound, so a
    # broadcast multiply and a reduction beat a batched GEMM of 1 x d matrices.
    q = q[:, :, None] if q.dim() == 3 else q  # shared q_i serves every j
    k = k[:, None] if k.dim() == 3 else k  # shared k_j serves every i
    return _heads(q * k, heads).sum(-1).permute(0, 3, 1, 2)


def attention_weights(scores: torch.Tensor, causal: bool, dropout: float, training: bool) -> torch.Tensor:
    """softmax over keys (with the causal mask j > i -> -inf), then dropout."""
    if causal:
        n = scores.shape[-1]
        mask = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    attn = scores.softmax(dim=-1)
    return F.dropout(attn, dropout, training) if dropout > 0 else attn


def weighted_sum(attn: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """o_i = sum_j a_ij v_ij: (B, H, N, N) with shared or relative v -> (B, N, H·d)."""
    heads = attn.shape[1]
    if v.dim() == 3:  # shared: an ordinary batched GEMM
        return torch.einsum("bhij,bjhd->bihd", attn, _heads(v, heads)).flatten(-2)
    weights = attn.permute(0, 2, 3, 1)[..., None]  # (B, N, N, H, 1)
    return (weights * _heads(v, heads)).sum(2).flatten(-2)


def translution_attention_reference(parts, key_index, query_index, heads, scale, causal):
    """The same attention through per-pair tensors (pure PyTorch; devices without the fused kernels).

    ``parts[r] = (shared, source, table)`` per role q, k, v (see :func:`translution_attention`).
    """
    roles = []
    for role, (shared, source, table) in zip(ROLES, parts):
        if table is None:
            roles.append(shared)
            continue
        index, side = (query_index, "query") if role == "q" else (key_index, "key")
        rel = _heads(relative_offset_projection_by_class(source, table, index, side), heads)  # (B, N, N, H, dr)
        if shared is not None:  # per head: [shared | relative], the shared part broadcast over pairs
            n = rel.shape[1]
            sh = _heads(shared, heads)
            sh = sh[:, :, None].expand(-1, -1, n, -1, -1) if role == "q" else sh[:, None].expand(-1, n, -1, -1, -1)
            rel = torch.cat([sh, rel], dim=-1)
        roles.append(rel.flatten(-2))
    attn = attention_weights(pair_scores(roles[0], roles[1], heads) * scale, causal, 0.0, False)
    return weighted_sum(attn, roles[2])


def translution_attention(
    x: Optional[torch.Tensor] = None, *, key_index: torch.Tensor, query_index: torch.Tensor, heads: int,
    q: Optional[torch.Tensor] = None, k: Optional[torch.Tensor] = None, v: Optional[torch.Tensor] = None,
    q_table: Optional[torch.Tensor] = None, k_table: Optional[torch.Tensor] = None,
    v_table: Optional[torch.Tensor] = None, q_source: Optional[torch.Tensor] = None,
    k_source: Optional[torch.Tensor] = None, v_source: Optional[torch.Tensor] = None,
    scale: Optional[float] = None, causal: bool = False,
) -> torch.Tensor:
    """Translution attention without per-pair tensors (spec: translution.md §3, §4).

    Every role has a shared part (q, k, v: (B, N, H·ds)) and/or a relative part, a
    source (B, N, C) projected per pair by a table (R, C, H·dr); ``x`` is the source of
    every table given without one.  Per head the role's vector is [shared | relative]::

        q_ij = [q_i | q_source_i q_table[query_index[i, j]]]
        k_ij = [k_j | k_source_j k_table[key_index[i, j]]]        (v likewise)
        o_i  = sum_j softmax_j(scale <q_ij, k_ij>) v_ij            (per head; j <= i when causal)

    Translution gives each role one part; α-Translution both (its plain and relative
    branches share one softmax).

    Args:
        x: (B, N, C), the default source of the tables.
        key_index, query_index: (N, N) offset classes, e.g. from :mod:`translution_ext.indexing`.
        heads: H.  q and k must have the same width per head.
        scale: default (q's width per head)^-1/2.
        causal: mask keys j > i.

    Returns:
        (B, N, H·dv), differentiable in every floating-point input.  Extra memory is
        O(B·H·N) plus a per-thread block of scores, never O(N²·D).  Devices without the
        fused kernels compute the same result through per-pair tensors.
    """
    check_positive_int("heads", heads, _OP)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"{_OP}scale must be a real number or None, got {scale!r}")
    if not isinstance(causal, bool):
        raise TypeError(f"{_OP}causal must be a bool, got {causal!r}")
    if x is not None:
        check_tensor("x", x, _OP)
    shared = [q, k, v]
    tables = [q_table, k_table, v_table]
    sources = [q_source, k_source, v_source]
    for r, role in enumerate(ROLES):
        if tables[r] is not None and sources[r] is None:
            if x is None:
                raise ValueError(f"{_OP}{role}_table needs {role}_source or x")
            sources[r] = x
    names = [*ROLES, *(f"{r}_source" for r in ROLES), *(f"{r}_table" for r in ROLES)]
    tensors = shared + sources + tables
    for name, t in zip(names, tensors):
        if t is not None:
            check_tensor(name, t, _OP)
    # The first shared tensor or source, in role order: the others must match its dtype, device, B and N.
    ref = next((t for r in range(3) for t in (shared[r], sources[r]) if t is not None), None)
    if ref is None:
        raise ValueError(f"{_OP}no role is given: each of q, k, v needs a shared tensor or a source and a table")
    tensors = autocast_inputs(ref.device.type, *tensors)
    parts = [(tensors[r], tensors[3 + r], tensors[6 + r]) for r in range(3)]
    width = _check_args(parts, key_index, query_index, heads)
    scale = width ** -0.5 if scale is None else scale
    if ref.device.type not in _native.FUSED_DEVICE_TYPES:
        _check_index_ranges(parts, key_index, query_index)
        return translution_attention_reference(parts, key_index, query_index, heads, float(scale), causal)
    out, _ = torch.ops.translution_ext.translution_attention(
        *tensors, key_index, query_index, heads, float(scale), causal)
    return out


def _check_args(parts, key_index, query_index, heads: int) -> int:
    """The C++ checks (same rules and words) on every device, before any arithmetic.

    ``parts[r] = (shared, source, table)`` per role.  Returns q's width per head.
    """
    ref = next(t for shared, source, _ in parts for t in (shared, source) if t is not None)
    check_float_dtype("inputs", ref, _OP)
    if ref.dim() != 3:
        raise ValueError(f"{_OP}inputs must be 3-D tensors (B, N, ...), got shape {tuple(ref.shape)}")
    b, n = ref.shape[:2]

    def like(t, name, what):
        if t.dtype != ref.dtype:
            raise TypeError(f"{_OP}{name} must have the same dtype as the other inputs ({ref.dtype}), got {t.dtype}")
        if t.device != ref.device:
            raise ValueError(f"{_OP}{name} must be on the same device as the other inputs ({ref.device}), "
                             f"got {t.device}")
        if what and (t.dim() != 3 or t.shape[0] != b or t.shape[1] != n):
            raise ValueError(f"{_OP}{name} must have shape (B, N, {what}) with (B, N) == ({b}, {n}) like the other "
                             f"inputs, got {tuple(t.shape)}")

    widths = []
    for role, (shared, source, table) in zip(ROLES, parts):
        if (source is None) != (table is None):
            raise ValueError(f"{_OP}{role}_source and {role}_table must be given together (a relative part), got only "
                             f"{role}_source")
        if shared is None and table is None:
            raise ValueError(f"{_OP}role {role} needs {role} (shared) or {role}_table with its source (relative), "
                             "got neither")
        width = 0
        if shared is not None:
            like(shared, role, "H*d")
            if shared.shape[2] % heads:
                raise ValueError(f"{_OP}{role}.size(2) must be a multiple of heads == {heads}, "
                                 f"got {tuple(shared.shape)}")
            width += shared.shape[2] // heads
        if table is not None:
            like(source, f"{role}_source", "C")
            like(table, f"{role}_table", "")
            c = source.shape[2]
            if table.dim() != 3 or table.shape[0] == 0 or table.shape[1] != c or table.shape[2] % heads:
                raise ValueError(f"{_OP}{role}_table must have shape (R, C, H*d) with R > 0, C == {role}_source.size(2)"
                                 f" == {c} and H*d a multiple of heads == {heads}, got {tuple(table.shape)}")
            width += table.shape[2] // heads
        widths.append(width)
    if all(table is None for _, _, table in parts):
        raise ValueError(f"{_OP}at least one of q_table, k_table, v_table must be given")
    if widths[0] != widths[1]:
        raise ValueError(f"{_OP}q and k must have the same width per head (shared + relative), got {widths[0]} "
                         f"and {widths[1]}")
    if widths[0] == 0:
        raise ValueError(f"{_OP}q and k must have a positive width per head (shared + relative), got 0")
    for name, index in (("key_index", key_index), ("query_index", query_index)):
        check_tensor(name, index, _OP)
        if tuple(index.shape) != (n, n):
            raise ValueError(f"{_OP}{name} must have shape (N, N) with N == {n}, got {tuple(index.shape)}")
        if index.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{_OP}{name} must have dtype int64 or int32, got {index.dtype}")
        if index.device != ref.device:
            raise ValueError(f"{_OP}{name} must be on the same device as the other inputs ({ref.device}), "
                             f"got {index.device}")
    return widths[0]


def _check_index_ranges(parts, key_index: torch.Tensor, query_index: torch.Tensor) -> None:
    """Every index value must name a row of the tables it selects from (the native kernels check this too)."""
    for role, (_, _, table) in zip(ROLES, parts):
        index, name = (query_index, "query_index") if role == "q" else (key_index, "key_index")
        if table is None or index.numel() == 0:
            continue
        lo, hi = (int(t) for t in torch.aminmax(index))
        if lo < 0 or hi >= table.shape[0]:
            raise ValueError(f"{_OP}{name} values must lie in [0, R) with R = {role}_table.size(0) == "
                             f"{table.shape[0]}, got min {lo} and max {hi}")


def _register() -> None:
    lib = "translution_ext::"

    def width(shared, table, heads):
        return sum(t.shape[-1] for t in (shared, table) if t is not None)

    @torch.library.register_fake(lib + "translution_attention")
    def _(q, k, v, q_source, k_source, v_source, q_table, k_table, v_table, key_index, query_index, heads, scale,
          causal):
        ref = next(t for t in (q, k, v, q_source, k_source, v_source) if t is not None)
        out = ref.new_empty((ref.shape[0], ref.shape[1], width(v, v_table, heads)))
        lse = ref.new_empty((ref.shape[0], heads, ref.shape[1]), dtype=_opmath(ref.dtype))
        return out, lse

    @torch.library.register_fake(lib + "translution_attention_backward")
    def _(grad_out, q, k, v, q_source, k_source, v_source, q_table, k_table, v_table, key_index, query_index, out,
          lse, heads, scale, causal):
        empty = grad_out.new_empty((0,))
        return tuple(empty if t is None else torch.empty_like(t)
                     for t in (q, k, v, q_source, k_source, v_source, q_table, k_table, v_table))

    def setup_context(ctx, inputs, output):
        *tensors, key_index, query_index, heads, scale, causal = inputs
        out, lse = output
        ctx.meta = (heads, scale, causal)
        ctx.save_for_backward(*tensors, key_index, query_index, out, lse)

    def backward(ctx, grad_out, _grad_lse):
        *tensors, key_index, query_index, out, lse = ctx.saved_tensors
        heads, scale, causal = ctx.meta
        grads = torch.ops.translution_ext.translution_attention_backward(
            grad_out.contiguous(), *tensors, key_index, query_index, out, lse, heads, scale, causal)
        result = [g if t is not None and ctx.needs_input_grad[i] else None
                  for i, (g, t) in enumerate(zip(grads, tensors))]
        return (*result, None, None, None, None, None)

    torch.library.register_autograd(lib + "translution_attention", backward, setup_context=setup_context)


if _native.FUSED_DEVICE_TYPES:
    _register()
