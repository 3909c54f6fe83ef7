"""The relative-offset projection: Python entry, pure-PyTorch references, fake kernels, autograd.

C++: csrc/relative_offset_projection.{h,cpp} (schemas, checks, pair plan),
csrc/cpu/relative_offset_projection_cpu.cpp, csrc/cuda/relative_offset_projection_cuda.cu.

Two pure-PyTorch forms:

* :func:`relative_offset_projection_gathered` follows the definition (and the
  authors' code) literally: it gathers an (Nq, Nk, C, D) weight tensor.  Only
  for tests on small shapes and as the benchmark's "reference approach".
* :func:`relative_offset_projection_by_class` projects every token with every
  table row, (B, N, R, D), then picks the row each pair needs.  It never builds
  the gathered weights; it is the fallback when the native kernels cannot run.
"""
from __future__ import annotations

import torch

from .. import _native
from .._autocast import autocast_inputs
from .._checks import check_float_dtype, check_tensor

__all__ = ["relative_offset_projection", "relative_offset_projection_by_class", "relative_offset_projection_gathered"]

_SIDES = ("key", "query")
_INDEX_DTYPES = (torch.int64, torch.int32)
_OP = "relative_offset_projection: "


def _source_positions(index: torch.Tensor, side: str) -> torch.Tensor:
    """(Nq, Nk) int64: the token of x that pair (i, j) reads (j for key, i for query)."""
    nq, nk = index.shape
    if side == "key":
        return torch.arange(nk, device=index.device).expand(nq, nk)
    return torch.arange(nq, device=index.device)[:, None].expand(nq, nk)


def relative_offset_projection_gathered(
    x: torch.Tensor, weight: torch.Tensor, index: torch.Tensor, side: str = "key"
) -> torch.Tensor:
    """out[b, i, j] = x[b, src(i, j)] @ weight[index[i, j]], via gathered weights.

    x: (B, N, C), weight: (R, C, D), index: (Nq, Nk) -> (B, Nq, Nk, D).
    Memory O(Nq·Nk·C·D): small shapes only.
    """
    w = weight[index.long()]  # (Nq, Nk, C, D)
    if side == "key":
        return torch.einsum("bjc,ijcd->bijd", x, w)
    return torch.einsum("bic,ijcd->bijd", x, w)


def relative_offset_projection_by_class(
    x: torch.Tensor, weight: torch.Tensor, index: torch.Tensor, side: str = "key"
) -> torch.Tensor:
    """Same result as the gathered form with memory O(B·N·R·D).

    x: (B, N, C), weight: (R, C, D), index: (Nq, Nk) -> (B, Nq, Nk, D).
    """
    projected = torch.einsum("bnc,rcd->bnrd", x, weight)  # every token x every table row
    return projected[:, _source_positions(index, side), index.long()]


def _check_args(x: torch.Tensor, weight: torch.Tensor, index: torch.Tensor, side: str) -> None:
    """Shape, dtype and device checks (the same rules and words as the C++ checks)."""
    if side not in _SIDES:
        raise ValueError(f"{_OP}side must be 'key' or 'query', got {side!r}")
    _check_tensors(x, weight, index)
    check_float_dtype("x", x, _OP)
    if weight.dtype != x.dtype:
        raise TypeError(
            f"{_OP}weight must have the same dtype as the other floating-point inputs ({x.dtype}), "
            f"got {weight.dtype}"
        )
    if weight.device != x.device:
        raise ValueError(f"{_OP}weight must be on the same device as x ({x.device}), got {weight.device}")
    if index.dim() != 2:
        raise ValueError(f"{_OP}index must be a 2-D tensor (Nq, Nk), got shape {tuple(index.shape)}")
    if index.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{_OP}index must have dtype int64 or int32, got {index.dtype}")
    if index.device != x.device:
        raise ValueError(f"{_OP}index must be on the same device as x ({x.device}), got {index.device}")
    if weight.dim() != 3:
        raise ValueError(f"{_OP}weight must be a 3-D tensor (R, C, D), got shape {tuple(weight.shape)}")
    if weight.shape[0] == 0:
        raise ValueError(
            f"{_OP}weight must have at least one offset class (R > 0), got shape {tuple(weight.shape)}"
        )
    if x.dim() != 3:
        raise ValueError(f"{_OP}x must be a 3-D tensor (B, N, C), got shape {tuple(x.shape)}")
    n_name, n_index = ("Nk", index.shape[1]) if side == "key" else ("Nq", index.shape[0])
    if n_index != x.shape[1]:
        raise ValueError(
            f"{_OP}index must have shape (Nq, Nk) with {n_name} == x.size(1) == {x.shape[1]} for "
            f"side='{side}', got {tuple(index.shape)}"
        )
    if weight.shape[1] != x.shape[2]:
        raise ValueError(
            f"{_OP}weight must have shape (R, C, D) with C == x.size(-1) == {x.shape[2]}, got "
            f"{tuple(weight.shape)}"
        )


def _check_tensors(x, weight, index) -> None:
    for name, t in (("x", x), ("weight", weight), ("index", index)):
        check_tensor(name, t, _OP)


def _check_index_range(index: torch.Tensor, num_classes: int) -> None:
    if index.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(index))
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{_OP}index values must lie in [0, R) with R = weight.size(0) == {num_classes}, "
            f"got min {lo} and max {hi}"
        )


def relative_offset_projection(
    x: torch.Tensor, weight: torch.Tensor, index: torch.Tensor, side: str = "key"
) -> torch.Tensor:
    """Projects every token pair with the weight matrix of its offset class.

    ``side="key"``:   ``out[b, i, j, :] = x[b, j, :] @ weight[index[i, j]]``
    ``side="query"``: ``out[b, i, j, :] = x[b, i, :] @ weight[index[i, j]]``

    Args:
        x: (B, N, C) float16/bfloat16/float32/float64 tokens.
        weight: (R, C, D), one C×D matrix per offset class, same dtype and device as x.
        index: (Nq, Nk) int64/int32 offset classes in [0, R); N == Nk for the key
            side, N == Nq for the query side.  Not differentiable.  Build it with
            :mod:`translution_ext.indexing`.
        side: "key" (k and v of Translution) or "query" (q).

    Under ``torch.autocast`` x and weight are cast to the autocast dtype.

    Returns:
        (B, Nq, Nk, D).  Differentiable in x and weight.  The (Nq, Nk, C, D)
        gathered weight tensor is never built.
    """
    _check_tensors(x, weight, index)
    if x.is_floating_point():
        x, weight = autocast_inputs(x.device.type, x, weight)
    if x.device.type in _native.NATIVE_DEVICE_TYPES:
        return torch.ops.translution_ext.relative_offset_projection(x, weight, index, side)
    _check_args(x, weight, index, side)
    _check_index_range(index, weight.shape[0])
    return relative_offset_projection_by_class(x, weight, index, side)


def _register_native() -> None:
    """Fake kernels (torch.compile) and autograd for the native ops."""
    lib = "translution_ext::"

    @torch.library.register_fake(lib + "relative_offset_projection")
    def _(x, weight, index, side="key"):
        _check_args(x, weight, index, side)
        return x.new_empty((x.shape[0], index.shape[0], index.shape[1], weight.shape[2]))

    @torch.library.register_fake(lib + "relative_offset_projection_grad_x")
    def _(grad_out, weight, index, side):
        n = index.shape[1] if side == "key" else index.shape[0]
        torch._check(grad_out.dim() == 4, lambda: f"{_OP}grad_out must be a 4-D tensor")
        return grad_out.new_empty((grad_out.shape[0], n, weight.shape[1]))

    @torch.library.register_fake(lib + "relative_offset_projection_grad_weight")
    def _(grad_out, x, index, side, num_classes):
        torch._check(grad_out.dim() == 4, lambda: f"{_OP}grad_out must be a 4-D tensor")
        return grad_out.new_empty((num_classes, x.shape[2], grad_out.shape[3]))

    def setup_context(ctx, inputs, output):
        x, weight, index, side = inputs
        ctx.side = side
        ctx.num_classes = weight.shape[0]
        needs_x, needs_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # grad_x needs the weight, grad_weight needs x: keep only what is needed.
        ctx.save_for_backward(x if needs_w else None, weight if needs_x else None, index)

    def backward(ctx, grad):
        x, weight, index = ctx.saved_tensors
        ops = torch.ops.translution_ext
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = ops.relative_offset_projection_grad_x(grad, weight, index, ctx.side)
        if ctx.needs_input_grad[1]:
            grad_w = ops.relative_offset_projection_grad_weight(grad, x, index, ctx.side, ctx.num_classes)
        return grad_x, grad_w, None, None

    torch.library.register_autograd(
        lib + "relative_offset_projection", backward, setup_context=setup_context
    )


if _native.has_native():
    _register_native()
