"""The pixel_shift_products op T(X): CPU and CUDA kernels against the reference, gradcheck, opcheck,
torch.compile and argument errors."""
from __future__ import annotations

import pytest
import torch

from translution_ext.ops.pixel_shift_products import pixel_shift_products, pixel_shift_products_reference, shift_offsets

from conftest import DEVICES, assert_close_to_reference, requires_native


def test_shift_offsets():
    assert shift_offsets((1,)) == [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    assert shift_offsets((1, 2))[8:] == [(2 * dy, 2 * dx) for dy, dx in shift_offsets((1,))]
    with pytest.raises(ValueError, match="shift_lengths must be a non-empty sequence of positive ints"):
        shift_offsets((0,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lengths,shape", [((1,), (2, 3, 5, 4)), ((1, 2), (1, 2, 7, 9)), ((3,), (2, 1, 2, 2))])
def test_pixel_shift_products_match_reference(device, dtype, lengths, shape):
    torch.manual_seed(0)
    shifts = shift_offsets(lengths)
    x = torch.randn(shape, dtype=torch.float64, device=device)
    exact = pixel_shift_products_reference(x, shifts)
    xd = x.to(dtype).clone().requires_grad_()
    out = pixel_shift_products(xd, shifts)
    assert out.shape == (shape[0], 8 * len(lengths) * shape[1], shape[2], shape[3])
    assert_close_to_reference(out, exact, pixel_shift_products_reference(x.to(dtype), shifts))
    g = torch.randn_like(exact)
    xr = x.clone().requires_grad_()
    pixel_shift_products_reference(xr, shifts).backward(g)
    out.backward(g.to(dtype))
    xs = x.to(dtype).clone().requires_grad_()
    pixel_shift_products_reference(xs, shifts).backward(g.to(dtype))
    assert_close_to_reference(xd.grad, xr.grad, xs.grad)


@requires_native
def test_pixel_shift_gradcheck_and_opcheck():
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    shifts = shift_offsets((1, 2))
    assert torch.autograd.gradcheck(lambda t: pixel_shift_products(t, shifts), (x,))
    flat = [v for p in shifts for v in p]
    torch.library.opcheck(torch.ops.translution_ext.pixel_shift_products.default, (x.float(), flat))


@requires_native
def test_pixel_shift_compile():
    torch._dynamo.reset()
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    shifts = shift_offsets((1,))
    f = torch.compile(lambda t: pixel_shift_products(t, shifts).square().sum(), fullgraph=True, backend="aot_eager")
    (g,) = torch.autograd.grad(f(x), x)
    (g_ref,) = torch.autograd.grad(pixel_shift_products_reference(x, shifts).square().sum(), x)
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("bad,match", [
    (torch.randn(3, 4, 5), r"x must be a 4-D tensor \(B, C, H, W\)"),
    (torch.randint(0, 3, (1, 1, 3, 3)), "x must have dtype float16, bfloat16, float32 or float64"),
])
def test_pixel_shift_errors(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pixel_shift_products(bad, shift_offsets())


@requires_native
@pytest.mark.parametrize("device", DEVICES)
def test_pixel_shift_backward_checks_grad_out(device):
    x = torch.randn(2, 3, 4, 5, device=device)
    flat = [v for shift in shift_offsets() for v in shift]
    backward = torch.ops.translution_ext.pixel_shift_products_backward
    with pytest.raises(ValueError, match=r"grad_out must have shape \(B, S\*C, H, W\) = \(2, 24, 4, 5\), got "
                                         r"\(2, 3, 4, 5\)"):
        backward(x, x, flat)
    with pytest.raises(TypeError, match=r"grad_out must have the dtype of x \(Float\), got Double"):
        backward(torch.zeros(2, 24, 4, 5, dtype=torch.float64, device=device), x, flat)


# ---- T(X) against the spec's S_δ written pixel by pixel (tests/spec_reference.py).

def test_shift_offsets_are_the_spec_neighbour_set():
    import spec_reference as spec

    for lengths in [(1,), (1, 2), (3,)]:
        assert sorted(shift_offsets(lengths)) == sorted(spec.neighbour_shifts(lengths))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shifts,shape", [
    (shift_offsets((1,)), (2, 3, 5, 4)),
    ([(0, 2), (-1, 0), (3, -2), (1, 1)], (1, 2, 4, 6)),  # asymmetric shifts: a sign or axis swap shows
    (shift_offsets((1, 2)), (1, 2, 6, 7)),
])
def test_pixel_shift_products_match_the_spec(device, shifts, shape):
    import spec_reference as spec

    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    xs = x.clone().requires_grad_()
    expected = spec.pixel_shift_products(xs, shifts)
    xd = x.to(device).requires_grad_()
    out = pixel_shift_products(xd, shifts)
    torch.testing.assert_close(out.cpu(), expected, atol=1e-12, rtol=1e-12)
    grad = torch.randn(expected.shape, generator=g, dtype=torch.float64)
    out.backward(grad.to(device))
    expected.backward(grad)
    torch.testing.assert_close(xd.grad.cpu(), xs.grad, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("count", [63, 64, 65, 129])
def test_shift_lists_across_the_launch_chunks_match_the_spec(device, count):
    # The CUDA kernels take kShiftsPerLaunch = 64 shifts per launch (csrc/cuda/shift_chunks.cuh).
    import spec_reference as spec

    shifts = [((s % 7) - 3, (s * 5 % 9) - 4) for s in range(count)]
    x = torch.randn(1, 2, 5, 6, generator=torch.Generator().manual_seed(count), dtype=torch.float64)
    torch.testing.assert_close(pixel_shift_products(x.to(device), shifts).cpu(), spec.pixel_shift_products(x, shifts),
                               atol=1e-12, rtol=1e-12)
