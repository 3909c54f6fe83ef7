"""ACmix's attention path as one op: windowed attention with the relative position term.

Spec: acmix.md.  C++: csrc/acmix_window_attention.{h,cpp} (schemas, checks),
csrc/cpu/acmix_window_attention_cpu.cpp, csrc/cuda/acmix_window_attention_cuda.cu.
The native kernels never unfold k, v or the position term; devices without them run
:func:`acmix_window_attention_reference`.
"""
from __future__ import annotations

import torch

import torch.nn.functional as F

from .. import _native
from .._autocast import autocast_inputs
from .._checks import check_float_dtype, check_positive_int, check_positive_odd_int, check_tensor

__all__ = ["acmix_window_attention", "acmix_window_attention_reference"]

_OP = "acmix_window_attention: "


def acmix_window_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: torch.Tensor, heads: int,
                                     window: int, stride: int) -> torch.Tensor:
    """ACmix's attention path, literally (unfolded windows; small inputs and tests).

    q, k, v: (B, C, H, W) with C = heads·hd (head-major channels); pe: (1, hd, H, W).
    logit[u] = <q·hd^-1/2, k_pad[u] + pe_centre − pe_pad[u]> over the window positions u
    (reflection padding of window // 2; q and pe_centre at [::stride, ::stride]),
    softmax over u, output = Σ_u A[u] v_pad[u]: (B, C, H_out, W_out).
    """
    b, c, h, w = q.shape
    hd = c // heads
    pad = window // 2
    h_out, w_out = (h - 1) // stride + 1, (w - 1) // stride + 1

    def windows(t):  # (N, hd, H, W) -> (N, hd, window², H_out, W_out)
        n = t.shape[0]
        cols = F.unfold(F.pad(t, (pad, pad, pad, pad), mode="reflect"), window, stride=stride)
        return cols.view(n, hd, window * window, h_out, w_out)

    q_att = (q.reshape(b * heads, hd, h, w) * hd ** -0.5)[:, :, ::stride, ::stride]
    pe_centre = pe[:, :, ::stride, ::stride]
    logits = (q_att.unsqueeze(2) * (windows(k.reshape(b * heads, hd, h, w)) + pe_centre.unsqueeze(2)
                                    - windows(pe))).sum(1)
    attn = logits.softmax(dim=1)
    out = (attn.unsqueeze(1) * windows(v.reshape(b * heads, hd, h, w))).sum(2)
    return out.reshape(b, c, h_out, w_out)


def acmix_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pe: torch.Tensor, heads: int,
                           window: int, stride: int = 1) -> torch.Tensor:
    """Local window attention of ACmix.

    Args:
        q, k, v: (B, C, H, W), C = heads·hd, head-major channels.
        pe: (1, hd, H, W) or (hd, H, W), the projected position grid (shared by heads).
        heads: Nh.  window: ka (odd).  stride: s.

    Returns:
        (B, C, ceil(H / s), ceil(W / s)); differentiable in q, k, v and pe.
    """
    for name, t in (("q", q), ("k", k), ("v", v), ("pe", pe)):
        check_tensor(name, t, _OP)
    q, k, v, pe = autocast_inputs(q.device.type, q, k, v, pe)
    pe = _check_args(q, k, v, pe, heads, window, stride)
    if q.device.type not in _native.ACMIX_DEVICE_TYPES:
        return acmix_window_attention_reference(q, k, v, pe[None], heads, window, stride)
    scale = (q.shape[1] // heads) ** -0.5
    out, _ = torch.ops.translution_ext.acmix_window_attention(q, k, v, pe, heads, window, stride, scale)
    return out


def _check_args(q, k, v, pe, heads, window, stride) -> torch.Tensor:
    """The C++ checks (same rules and words) for every device, before any arithmetic; returns pe as (hd, H, W)."""
    check_tensor("q", q, _OP, ndim=4, shape="(B, C, H, W)")
    check_float_dtype("q", q, _OP)
    for name, t in (("k", k), ("v", v)):
        if tuple(t.shape) != tuple(q.shape):
            raise ValueError(f"{_OP}{name} must have the shape of q {tuple(q.shape)}, got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{_OP}{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
    c, h, w = q.shape[1:]
    check_positive_int("heads", heads, _OP)
    if c % heads:
        raise ValueError(f"{_OP}heads must divide C == {c}, got {heads}")
    hd = c // heads
    if pe.dim() == 4:  # one position grid, shared by the whole batch
        if pe.shape[0] != 1:
            raise ValueError(f"{_OP}pe must have batch size 1 (one position grid shared by the batch), "
                             f"got shape {tuple(pe.shape)}")
        pe = pe[0]
    if tuple(pe.shape) != (hd, h, w):
        raise ValueError(f"{_OP}pe must have shape (hd, H, W) = {(hd, h, w)} or (1, hd, H, W), "
                         f"got {tuple(pe.shape)}")
    if pe.dtype != q.dtype:
        raise TypeError(f"{_OP}pe must have the dtype of q ({q.dtype}), got {pe.dtype}")
    check_positive_odd_int("window", window, _OP)
    check_positive_int("stride", stride, _OP)
    if window // 2 >= h or window // 2 >= w:
        raise ValueError(f"{_OP}H and W must exceed window // 2 == {window // 2} (reflection padding), "
                         f"got {h} x {w}")
    for name, t in (("k", k), ("v", v), ("pe", pe)):
        if t.device != q.device:
            raise ValueError(f"{_OP}{name} must be on q's device ({q.device}), got {t.device}")
    return pe


def _register() -> None:
    lib = "translution_ext::"

    @torch.library.register_fake(lib + "acmix_window_attention")
    def _(q, k, v, pe, heads, window, stride, scale):
        b, c, h, w = q.shape
        ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
        acc = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        return q.new_empty((b, c, ho, wo)), q.new_empty((b, heads, window * window, ho, wo), dtype=acc)

    @torch.library.register_fake(lib + "acmix_window_attention_backward")
    def _(grad_out, q, k, v, pe, attn, heads, window, stride, scale):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(pe)

    def setup_context(ctx, inputs, output):
        q, k, v, pe, heads, window, stride, scale = inputs
        ctx.meta = (heads, window, stride, scale)
        ctx.save_for_backward(q, k, v, pe, output[1])
        # The softmax weights are for the backward only: no zero gradient of their size per call.
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_out, _grad_attn):
        if grad_out is None:
            return None, None, None, None, None, None, None, None
        q, k, v, pe, attn = ctx.saved_tensors
        grads = torch.ops.translution_ext.acmix_window_attention_backward(grad_out.contiguous(), q, k, v, pe, attn,
                                                                          *ctx.meta)
        return (*grads, None, None, None, None)

    torch.library.register_autograd(lib + "acmix_window_attention", backward, setup_context=setup_context)


if _native.ACMIX_DEVICE_TYPES:
    _register()
