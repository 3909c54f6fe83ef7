"""relative_offset_projection: reference equality, gradients, registration, errors."""
from __future__ import annotations

import random

import pytest
import torch

import translution_ext
from translution_ext import indexing
from translution_ext.ops.relative_offset_projection import (
    relative_offset_projection,
    relative_offset_projection_by_class,
    relative_offset_projection_gathered,
)

from conftest import DEVICES, FLOAT_DTYPES, assert_close_to_reference, requires_native

OPS = torch.ops.translution_ext if translution_ext.has_native() else None

LAYOUTS = {
    "1d": lambda: indexing.offset_index_1d(7, 5),
    "causal": lambda: indexing.offset_index_causal_1d(6),
    "2d": lambda: indexing.offset_index_2d((3, 4)),
    "2d_cls": lambda: indexing.offset_index_2d_cls((3, 3), (2, 3)),
}


def make_inputs(ix, side, B=3, C=12, D=10, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    index = ix.key if side == "key" else ix.query
    x = torch.randn(B, index.shape[1] if side == "key" else index.shape[0], C, generator=g, dtype=torch.float64)
    w = torch.randn(ix.num_classes, C, D, generator=g, dtype=torch.float64) / C**0.5
    return x.to(device, dtype), w.to(device, dtype), index.to(device)


def exact(x, w, index, side):
    """Forward and gradients (for a fixed random cotangent) in float64 via the gathered reference."""
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    out = relative_offset_projection_gathered(x64, w64, index, side)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out.device)
    gx, gw = torch.autograd.grad(out, (x64, w64), cot)
    return out.detach(), gx, gw, cot


def run(fn, x, w, index, side, cot):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    out = fn(x, w, index, side)
    gx, gw = torch.autograd.grad(out, (x, w), cot.to(out.dtype))
    return out.detach(), gx, gw


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("side", ["key", "query"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_matches_reference(device, dtype, side, layout):
    x, w, index = make_inputs(LAYOUTS[layout](), side, dtype=dtype, device=device)
    ref_out, ref_gx, ref_gw, cot = exact(x, w, index, side)
    ours = run(relative_offset_projection, x, w, index, side, cot)
    same_dtype = run(relative_offset_projection_gathered, x, w, index, side, cot)
    for a, e, s in zip(ours, (ref_out, ref_gx, ref_gw), same_dtype):
        assert a.dtype == dtype and a.shape == e.shape
        assert_close_to_reference(a, e, s)


@pytest.mark.parametrize("side", ["key", "query"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_fallback_reference_matches_gathered(side, layout):
    x, w, index = make_inputs(LAYOUTS[layout](), side)
    torch.testing.assert_close(
        relative_offset_projection_by_class(x, w, index, side),
        relative_offset_projection_gathered(x, w, index, side),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("side", ["key", "query"])
@pytest.mark.parametrize("layout", ["1d", "2d_cls", "causal"])
def test_gradcheck_float64(device, side, layout):
    x, w, index = make_inputs(LAYOUTS[layout](), side, B=2, C=4, D=3, device=device)
    x.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: relative_offset_projection(a, b, index, side), (x, w))


def opcheck_samples(device):
    for seed, (layout, side, dtype) in enumerate(
        [("1d", "key", torch.float64), ("2d_cls", "query", torch.float32), ("causal", "key", torch.float32),
         ("2d", "query", torch.float64)]
    ):
        x, w, index = make_inputs(LAYOUTS[layout](), side, B=2, C=5, D=4, dtype=dtype, device=device, seed=seed)
        yield x.requires_grad_(), w.requires_grad_(), index, side


@requires_native
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for x, w, index, side in opcheck_samples(device):
        torch.library.opcheck(OPS.relative_offset_projection.default, (x, w, index, side))
        out = OPS.relative_offset_projection(x, w, index, side).detach()
        grad = torch.randn_like(out)
        torch.library.opcheck(OPS.relative_offset_projection_grad_x.default, (grad, w.detach(), index, side))
        torch.library.opcheck(
            OPS.relative_offset_projection_grad_weight.default, (grad, x.detach(), index, side, w.shape[0])
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(device, backend):
    x, w, index = make_inputs(LAYOUTS["2d_cls"](), "key", dtype=torch.float32, device=device)
    torch._dynamo.reset()

    def loss(x, w):
        return relative_offset_projection(x, w, index, "key").square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend=backend)
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    xe, we = x.clone().requires_grad_(), w.clone().requires_grad_()
    compiled(xs, ws).backward()
    loss(xe, we).backward()
    torch.testing.assert_close(xs.grad, xe.grad)
    torch.testing.assert_close(ws.grad, we.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("side", ["key", "query"])
def test_non_contiguous_inputs(device, side):
    x, w, index = make_inputs(LAYOUTS["2d"](), side, device=device)
    x_nc = x.transpose(1, 2).contiguous().transpose(1, 2)  # (B, N, C) with N fastest
    w_nc = w.permute(0, 2, 1).contiguous().permute(0, 2, 1)
    i_nc = index.t().contiguous().t()
    assert not (x_nc.is_contiguous() or w_nc.is_contiguous() or i_nc.is_contiguous())
    ref_out, ref_gx, ref_gw, cot = exact(x, w, index, side)
    cot_nc = cot.transpose(0, 3).contiguous().transpose(0, 3)  # a non-contiguous cotangent too
    xs, ws = x_nc.detach().requires_grad_(), w_nc.detach().requires_grad_()
    out = relative_offset_projection(xs, ws, i_nc, side)
    gx, gw = torch.autograd.grad(out, (xs, ws), cot_nc)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(gx, ref_gx)
    torch.testing.assert_close(gw, ref_gw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("side", ["key", "query"])
def test_empty_batch(device, side):
    x, w, index = make_inputs(LAYOUTS["1d"](), side, B=0, device=device)
    x.requires_grad_()
    w.requires_grad_()
    out = relative_offset_projection(x, w, index, side)
    assert out.shape == (0, index.shape[0], index.shape[1], w.shape[2])
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("device", DEVICES)
def test_int32_index_and_unused_classes(device):
    ix = LAYOUTS["1d"]()
    x, w, index = make_inputs(ix, "key", device=device)
    w = torch.cat([w, torch.randn(3, *w.shape[1:], dtype=w.dtype, device=device)])  # rows no pair uses
    w.requires_grad_()
    out = relative_offset_projection(x, w, index.int(), "key")
    torch.testing.assert_close(out, relative_offset_projection_gathered(x, w, index, "key"))
    out.sum().backward()
    assert torch.equal(w.grad[-3:], torch.zeros_like(w.grad[-3:]))


@pytest.mark.parametrize("device", DEVICES)
def test_random_sweep(device):
    rng = random.Random(1234)
    for trial in range(25):
        B, Nq, Nk = rng.randint(1, 3), rng.randint(1, 9), rng.randint(1, 9)
        C, D, R = rng.randint(1, 17), rng.randint(1, 13), rng.randint(1, 20)
        side = rng.choice(["key", "query"])
        g = torch.Generator().manual_seed(trial)
        index = torch.randint(0, R, (Nq, Nk), generator=g).to(device)
        x = torch.randn(B, Nk if side == "key" else Nq, C, generator=g, dtype=torch.float64).to(device)
        w = torch.randn(R, C, D, generator=g, dtype=torch.float64).to(device)
        ref_out, ref_gx, ref_gw, cot = exact(x, w, index, side)
        out, gx, gw = run(relative_offset_projection, x, w, index, side, cot)
        msg = f"trial {trial}: B={B} Nq={Nq} Nk={Nk} C={C} D={D} R={R} side={side}"
        torch.testing.assert_close(out, ref_out, msg=msg)
        torch.testing.assert_close(gx, ref_gx, msg=msg)
        torch.testing.assert_close(gw, ref_gw, msg=msg)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_backward(device):
    x, w, index = make_inputs(indexing.offset_index_2d_cls((5, 5)), "key", B=4, C=32, D=24,
                              dtype=torch.float32, device=device)
    cot = torch.randn(x.shape[0], *index.shape, w.shape[2], device=device)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = [run(relative_offset_projection, x, w, index, "key", cot)[1:] for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(previous)
    for gx, gw in grads[1:]:
        assert torch.equal(gx, grads[0][0]) and torch.equal(gw, grads[0][1])


@requires_native
@pytest.mark.parametrize("device", DEVICES)
def test_index_maps_are_validated_and_planned_once_per_version(device):
    """The kernels read an index map's values on the host once (no device sync per call):
    a change that bypasses the version counter (.data) goes unseen, an in-place change is checked."""
    x, w, index = make_inputs(LAYOUTS["1d"](), "key", device=device)
    index = index.clone()
    first = relative_offset_projection(x, w, index, "key")
    index.data[0, 0] = w.shape[0] + 3  # no version bump: the cached plan serves
    torch.testing.assert_close(relative_offset_projection(x, w, index, "key"), first)
    index[0, 0] = w.shape[0] + 3  # a tracked in-place change: validated again
    with pytest.raises(ValueError, match=r"index values must lie in \[0, R\)"):
        relative_offset_projection(x, w, index, "key")


def bad_inputs():
    x = torch.randn(2, 5, 4)
    w = torch.randn(9, 4, 3)
    ix = indexing.offset_index_1d(5).key
    yield "x rank", (torch.randn(5, 4), w, ix, "key"), ValueError, r"x must be a 3-D tensor \(B, N, C\), got shape \(5, 4\)"
    yield "weight rank", (x, torch.randn(9, 12), ix, "key"), ValueError, r"weight must be a 3-D tensor \(R, C, D\)"
    yield "index rank", (x, w, ix.flatten(), "key"), ValueError, r"index must be a 2-D tensor \(Nq, Nk\), got shape \(25,\)"
    yield "C mismatch", (x, torch.randn(9, 6, 3), ix, "key"), ValueError, r"weight must have shape \(R, C, D\) with C == x.size\(-1\) == 4, got \(9, 6, 3\)"
    yield "N mismatch key", (x, w, ix[:, :4], "key"), ValueError, r"Nk == x.size\(1\) == 5 for side='key', got \(5, 4\)"
    yield "N mismatch query", (x, w, ix[:3], "query"), ValueError, r"Nq == x.size\(1\) == 5 for side='query', got \(3, 5\)"
    yield "index too large", (x, w, ix + 1, "key"), ValueError, r"index values must lie in \[0, R\) with R = weight.size\(0\) == 9, got min 1 and max 9"
    yield "index negative", (x, w, ix - 1, "key"), ValueError, r"index values must lie in \[0, R\).*got min -1"
    yield "index dtype", (x, w, ix.float(), "key"), TypeError, r"index must have dtype int64 or int32, got (Float|torch.float32)"
    yield "x dtype", (x.int(), w, ix, "key"), TypeError, r"x must have dtype float16, bfloat16, float32 or float64, got (Int|torch.int32)"
    yield "weight dtype", (x, w.double(), ix, "key"), TypeError, r"weight must have the same dtype as the other floating-point inputs \((Float|torch.float32)\), got (Double|torch.float64)"
    yield "side", (x, w, ix, "keys"), ValueError, r"side must be 'key' or 'query', got 'keys'"
    yield "no classes", (x, torch.randn(0, 4, 3), ix, "key"), ValueError, r"at least one offset class \(R > 0\)"
    meta_w = w.to("meta")
    yield "weight device", (x, meta_w, ix, "key"), ValueError, r"weight must be on the same device as x \(cpu\), got meta"
    yield "index device", (x, w, ix.to("meta"), "key"), ValueError, r"index must be on the same device as x \(cpu\), got meta"


BAD = list(bad_inputs())


@pytest.mark.parametrize("args,exc,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_inputs_raise_clear_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        relative_offset_projection(*args)


@pytest.mark.parametrize("args,exc,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_inputs_on_the_reference_path(args, exc, match, monkeypatch):
    monkeypatch.setattr(translution_ext._native, "NATIVE_DEVICE_TYPES", frozenset())
    with pytest.raises(exc, match=match):
        relative_offset_projection(*args)


@requires_native
def test_bad_inputs_to_backward_ops():
    x, w, index = make_inputs(LAYOUTS["1d"](), "key")
    grad = torch.randn(3, 5, 5, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"grad_out must be a 4-D tensor \(B, Nq, Nk, D\) with \(Nq, Nk\) == \(5, 5\)"):
        OPS.relative_offset_projection_grad_x(grad[:, :4], w, index, "key")
    with pytest.raises(ValueError, match=r"grad_out must have D == weight.size\(2\) == 10"):
        OPS.relative_offset_projection_grad_x(grad[..., :7], w, index, "key")
    with pytest.raises(ValueError, match=r"grad_out must have B == x.size\(0\) == 3"):
        OPS.relative_offset_projection_grad_weight(grad[:2], x, index, "key", w.shape[0])
    with pytest.raises(ValueError, match=r"index values must lie in \[0, R\) with R = weight.size\(0\) == 4"):
        OPS.relative_offset_projection_grad_weight(grad, x, index, "key", 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_mixed_devices_error():
    x, w, index = make_inputs(LAYOUTS["1d"](), "key")
    with pytest.raises(ValueError, match=r"weight must be on the same device as x \(cpu\), got cuda"):
        relative_offset_projection(x, w.cuda(), index, "key")
    with pytest.raises(ValueError, match=r"index must be on the same device as x \(cuda:0\), got cpu"):
        relative_offset_projection(x.cuda(), w.cuda(), index, "key")


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_runs_in_autocast_dtype(device):
    x, w, index = make_inputs(LAYOUTS["2d_cls"](), "key", dtype=torch.float32, device=device)
    w.requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16):
        out = relative_offset_projection(x, w, index, "key")
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert w.grad.dtype == torch.float32
    ref_out, _, _, _ = exact(x, w, index, "key")
    same = relative_offset_projection_gathered(x.bfloat16(), w.detach().bfloat16(), index, "key")
    assert_close_to_reference(out.detach(), ref_out, same)


# ---- The op against the spec's explicit per-row gather (tests/spec_reference.py), on shapes across
# every tile edge: the CPU kernel's 256-row tiles (B · pairs of one class), the CUDA kernels' kBM = 64
# row and column tiles and kBK = 32 reduction slices (csrc/cuda/block_gemm.cuh).
SPEC_TILE_CASES = [  # (B, N, C, D): the 1D central class has B·N pairs
    (1, 255, 3, 2),
    (1, 256, 2, 3),
    (1, 257, 3, 2),
    (3, 100, 4, 5),   # 300 rows: one full CPU tile and a partial one; grad_x blocks of 256 // 3 runs
    (2, 40, 31, 63),  # 80 rows: two kBM tiles; one kBK slice short of full
    (2, 33, 33, 65),  # two kBK slices, two kBN columns
    (1, 65, 64, 64),  # exactly the tiles
    (2, 20, 65, 31),  # three kBK slices / two kBM tiles of C in grad_weight
]
# The 255-257 token cases are about the CPU tiles: the emulated CUDA kernels (far slower) run the rest.
SPEC_TILE_PARAMS = [
    pytest.param(*case, getattr(device, "values", [device])[0], marks=getattr(device, "marks", ()),
                 id="-".join(map(str, (*case, getattr(device, "id", None) or getattr(device, "values", [device])[0]))))
    for case in SPEC_TILE_CASES for device in DEVICES if case[1] < 255 or getattr(device, "id", None) != "emu"]


@pytest.mark.parametrize("side", ["key", "query"])
@pytest.mark.parametrize("b,n,c,d,device", SPEC_TILE_PARAMS)
def test_matches_the_spec_gather_across_tile_edges(device, side, b, n, c, d):
    import spec_reference as spec
    import translution_reference as maps

    g = torch.Generator().manual_seed(n + c)
    rows, key_index, query_index = maps.spec_rows("1d", n)
    index = key_index if side == "key" else query_index
    x = torch.randn(b, n, c, generator=g, dtype=torch.float64)
    w = torch.randn(rows, c, d, generator=g, dtype=torch.float64) * c ** -0.5
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    expected = spec.relative_offset_projection(xs, ws, index, side)
    xo, wo = x.to(device).requires_grad_(), w.to(device).requires_grad_()
    out = relative_offset_projection(xo, wo, index.to(device), side)
    torch.testing.assert_close(out.cpu(), expected, atol=1e-12, rtol=1e-10)
    cot = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    out.backward(cot.to(device))
    expected.backward(cot)
    torch.testing.assert_close(xo.grad.cpu(), xs.grad, atol=1e-11, rtol=1e-10, msg="grad x")
    torch.testing.assert_close(wo.grad.cpu(), ws.grad, atol=1e-11, rtol=1e-10, msg="grad weight")
