"""What ``python -m translution_ext bench`` measures: per op, the implementations and their FLOPs.

Every builder returns a :class:`Workload`: a step to time, the useful FLOPs of that step,
and notes (rows a reference ran on, the scale applied to a GEMM measured smaller).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

import torch
from torch.nn import functional as F

from .baselines import gemm_step, reference_translution

GEMM_BYTES = 512 * 2**20  # operands of the roofline GEMM; larger FLOPs are timed at this size and scaled


@dataclass
class Setting:
    """One measurement: op, implementation and shape.

    length: tokens N for the 1D layouts; the grid / image side for 2d_cls, acmix and xvolution.
    """

    op: str
    impl: str
    length: int
    batch: int = 8
    dim: int = 192
    heads: int = 3
    dtype: str = "float32"
    device: str = "cpu"
    backend: str = "auto"
    layout: str = "1d"
    relative: str = "qkv"
    window: int = 7
    pssa_kernel_size: int = 1
    reference_gb: float = 4.0
    repeat: int = 3


@dataclass
class Workload:
    """A step to time, its useful FLOPs, the factor from its time to the full workload's, and notes."""
    step: Callable[[], None]
    flops: float
    scale: float = 1.0  # the time of the full workload is scale x the timed step
    notes: Dict[str, object] = field(default_factory=dict)


def tokens(s: Setting) -> int:
    """The sequence length the op sees: N (1D), side² + 1 (2d_cls) or side² (images)."""
    if s.op in ("acmix", "xvolution"):
        return s.length * s.length
    return s.length * s.length + 1 if s.layout == "2d_cls" else s.length


def _dtype(s: Setting) -> torch.dtype:
    return getattr(torch, s.dtype)


def _backward_step(run: Callable[[], torch.Tensor], grad: torch.Tensor, leaves) -> Callable[[], None]:
    def step():
        run().backward(grad)
        for t in leaves:
            t.grad = None
    return step


def _gemm(s: Setting, flops: float, k: int, n: int, backward: bool = True) -> Workload:
    """A GEMM doing ``flops`` useful FLOPs as (m, k) @ (k, n) (+ backward), timed at most GEMM_BYTES big."""
    per_pass = 3 if backward else 1
    m_needed = max(1, round(flops / (2 * per_pass * k * n)))
    m = max(1, min(m_needed, GEMM_BYTES // ((k + 2 * n) * torch.finfo(_dtype(s)).bits // 8)))
    notes = {} if m == m_needed else {"timed_rows": m, "full_rows": m_needed}
    return Workload(gemm_step(m, k, n, s.device, _dtype(s), backward), flops, m_needed / m, notes)


def _sdpa(s: Setting, n: int) -> Workload:
    """Ordinary attention over the same tokens, heads and width: context, not a baseline (its own FLOPs)."""
    d = s.dim // s.heads
    q, k, v = (torch.randn(s.batch, s.heads, n, d, device=s.device, dtype=_dtype(s), requires_grad=True)
               for _ in range(3))
    g = torch.randn(s.batch, s.heads, n, d, device=s.device, dtype=_dtype(s))
    causal = s.layout == "causal"
    run = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    return Workload(_backward_step(run, g, (q, k, v)), 3 * 4 * s.batch * n * n * s.dim)


def _reference_rows(s: Setting, n: int, bytes_per_row: int) -> int:
    return max(1, min(n, int(s.reference_gb * 2**30 // bytes_per_row)))


def _index(s: Setting):
    from .. import indexing

    if s.layout == "2d_cls":
        return indexing.offset_index_2d_cls((s.length, s.length))
    if s.layout == "causal":
        return indexing.offset_index_causal_1d(s.length)
    return indexing.offset_index_1d(s.length)


def relproj(s: Setting) -> Workload:
    """relative_offset_projection, key side, C = D = dim, forward + backward.

    Useful FLOPs: 3 x 2·B·N²·C·D (forward, grad x, grad weight)."""
    from ..ops import relative_offset_projection
    from ..ops.relative_offset_projection import relative_offset_projection_gathered

    ix, n, c = _index(s), tokens(s), s.dim
    flops = 3 * 2 * s.batch * n * n * c * c
    if s.impl == "gemm":
        return _gemm(s, flops, c, c)
    if s.impl == "sdpa":
        return _sdpa(s, n)
    dt = _dtype(s)
    index = ix.key.to(s.device)
    rows, op = n, relative_offset_projection
    if s.impl == "reference":
        rows = _reference_rows(s, n, 3 * n * c * c * torch.finfo(dt).bits // 8)
        index, op = index[:rows], relative_offset_projection_gathered
    x = torch.randn(s.batch, n, c, device=s.device, dtype=dt, requires_grad=True)
    w = (torch.randn(ix.num_classes, c, c, device=s.device, dtype=dt) / c ** 0.5).requires_grad_()
    g = torch.randn(s.batch, rows, n, c, device=s.device, dtype=dt)
    step = _backward_step(lambda: op(x, w, index, "key"), g, (x, w))
    return Workload(step, flops, n / rows, {"timed_rows": rows, "full_rows": n} if rows < n else {})


def translution(s: Setting) -> Workload:
    """A Translution block (LayerNorm, attention, output projection), forward + backward.

    Useful FLOPs: 3 x (2·B·N²·C·D per relative role + 2·B·N·C·D per shared role
    + 2·B·N²·D scores + 2·B·N²·D weighted sum), D = dim."""
    from ..nn import Attention, Translution

    n, c = tokens(s), s.dim
    roles = len(s.relative)
    flops = 3 * (2 * s.batch * n * n * (roles * c * c + 2 * c) + 2 * s.batch * n * c * c * (3 - roles))
    if s.impl == "gemm":
        return _gemm(s, flops, c, c)
    dt = _dtype(s)
    x = torch.randn(s.batch, n, c, device=s.device, dtype=dt, requires_grad=True)
    if s.impl == "sdpa":
        block = Attention(c, s.heads, c // s.heads, causal=s.layout == "causal").to(s.device, dt)
        own = 3 * (4 * s.batch * n * n * c + 8 * s.batch * n * c * c)  # its attention and 4 projections
        return Workload(_backward_step(lambda: block(x), torch.randn_like(x), (x,)), own)
    where = dict(grid=(s.length, s.length)) if s.layout == "2d_cls" else dict(max_len=s.length)
    backend = s.backend if s.impl == "ours" else "native"
    block = Translution(c, s.heads, c // s.heads, layout=s.layout, relative=s.relative, backend=backend,
                        **where).to(s.device, dt)
    if s.impl == "ours":
        step = _backward_step(lambda: block(x), torch.randn_like(x), (x,))
        return Workload(lambda: (step(), block.zero_grad(set_to_none=True)), flops)
    if s.relative != "qkv":
        raise ValueError("the reference approach is implemented for relative='qkv' only")
    rows = _reference_rows(s, n, 7 * n * c * c * torch.finfo(dt).bits // 8)  # 3 gathered, their grads, a copy
    g = torch.randn(s.batch, rows, c, device=s.device, dtype=dt)
    step = _backward_step(lambda: reference_translution(block, x, rows), g, (x,))
    return Workload(lambda: (step(), block.zero_grad(set_to_none=True)), flops, n / rows,
                    {"timed_rows": rows, "full_rows": n} if rows < n else {})


def acmix(s: Setting) -> Workload:
    """ACmix's windowed attention with the position term (stride 1), forward + backward.

    Useful FLOPs: 3 x 4·B·H·W·window²·C (logits and aggregation)."""
    from ..ops.acmix_window_attention import acmix_window_attention, acmix_window_attention_reference

    hw, c, u = tokens(s), s.dim, s.window * s.window
    flops = 3 * 4 * s.batch * hw * u * c
    if s.impl == "gemm":
        return _gemm(s, flops, c, c)
    if s.impl == "sdpa":
        return _sdpa(s, hw)
    dt = _dtype(s)
    q, k, v = (torch.randn(s.batch, c, s.length, s.length, device=s.device, dtype=dt, requires_grad=True)
               for _ in range(3))
    pe = torch.randn(1, c // s.heads, s.length, s.length, device=s.device, dtype=dt, requires_grad=True)
    op = acmix_window_attention if s.impl == "ours" else acmix_window_attention_reference
    g = torch.randn_like(q)
    return Workload(_backward_step(lambda: op(q, k, v, pe, s.heads, s.window, 1), g, (q, k, v, pe)), flops)


def xvolution(s: Setting) -> Workload:
    """X-volution (K = 3, |D| = 8, Ka = --pssa-kernel-size) in eval mode, forward only: deployed
    (ours: the xvolution_deployed op), training form, a plain 3x3 conv doing the deployed form's
    useful MACs (same_macs_conv: round(C·(9 + 8·Ka²) / 9) -> C channels, its roofline), the folded
    conv alone on a ready [X, T(X)] (wide_conv: what running W* as one conv costs at least) and a
    plain 3x3 conv C -> C (for scale).

    FLOPs: useful MACs x 2; ours, training and same_macs_conv 2·B·H·W·C·C·(9 + 8·Ka²), wide_conv
    2·B·H·W·C·9C·3², conv 2·B·H·W·C·C·9."""
    from ..nn import XVolution
    from ..reparameterize import reparameterize_model

    c, dt, pixels, ka = s.dim, _dtype(s), s.batch * tokens(s), s.pssa_kernel_size
    x = torch.randn(s.batch, c, s.length, s.length, device=s.device, dtype=dt)
    model = XVolution(c, c, 3, pssa_kernel_size=ka).to(s.device, dt).eval()
    flops = 2 * pixels * c * c * (9 + 8 * ka * ka)  # 3x3 conv C -> C and Ka x Ka conv 8C -> C
    if s.impl == "ours":
        run = reparameterize_model(model)
    elif s.impl == "training":
        run = model
    elif s.impl == "same_macs_conv":
        run = torch.nn.Conv2d(round(c * (9 + 8 * ka * ka) / 9), c, 3, padding=1).to(s.device, dt).eval()
        x = torch.randn(s.batch, run.in_channels, s.length, s.length, device=s.device, dtype=dt)
    elif s.impl == "wide_conv":
        wide = reparameterize_model(model).deployed_conv
        x = torch.randn(s.batch, wide.in_channels, s.length, s.length, device=s.device, dtype=dt)
        run, flops = wide, 2 * pixels * c * 9 * c * 9
    else:
        run, flops = torch.nn.Conv2d(c, c, 3, padding=1).to(s.device, dt).eval(), 2 * pixels * c * c * 9

    def step():
        with torch.no_grad():
            run(x)
    return Workload(step, flops)


OPS: Dict[str, Tuple[Callable[[Setting], Workload], Tuple[str, ...]]] = {
    "relproj": (relproj, ("ours", "reference", "gemm", "sdpa")),
    "translution": (translution, ("ours", "reference", "gemm", "sdpa")),
    "acmix": (acmix, ("ours", "reference", "gemm", "sdpa")),
    "xvolution": (xvolution, ("ours", "training", "same_macs_conv", "wide_conv", "conv")),
}
BASELINE = {"relproj": "reference", "translution": "reference", "acmix": "reference", "xvolution": "training"}
ROOFLINE = {"relproj": "gemm", "translution": "gemm", "acmix": "gemm", "xvolution": "same_macs_conv"}
PASS = {"relproj": "fwd+bwd", "translution": "fwd+bwd", "acmix": "fwd+bwd", "xvolution": "fwd (eval)"}


def describe(op: str) -> str:
    """The op's docstring: what is measured and its FLOPs formula."""
    doc = OPS[op][0].__doc__ or ""
    return " ".join(doc.split())
