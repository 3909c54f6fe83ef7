"""The xvolution_deployed op: CPU and CUDA kernels against the folded single convolution and the
reference, every dtype, opcheck, torch.compile, autograd (through the reference) and argument errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from translution_ext.ops import xvolution_deployed
from translution_ext.ops.pixel_shift_products import shift_offsets
from translution_ext.ops.xvolution_deployed import xvolution_deployed_reference

from conftest import DEVICES, FLOAT_DTYPES, assert_close_to_reference, requires_native


def folded_weight(co, ci, k, ka, lengths, dtype=torch.float64, device="cpu", seed=0):
    """A W* as the fold leaves it: the T(X) channels are zero outside the centre Ka x Ka taps."""
    g = torch.Generator().manual_seed(seed)
    s = 8 * len(lengths)
    w = torch.randn(co, ci * (1 + s), k, k, generator=g, dtype=torch.float64)
    keep = torch.zeros(k, k, dtype=torch.float64)
    off = (k - ka) // 2
    keep[off:off + ka, off:off + ka] = 1
    w[:, ci:] *= keep
    return w.to(device, dtype), torch.randn(co, generator=g, dtype=torch.float64).to(device, dtype)


def one_conv(x, w, b, shifts, stride):
    """The deployed form as the spec writes it: one K x K conv over concat(X, T(X)), T(X) from the
    spec's S_δ pixel by pixel (tests/spec_reference.py), not from the package."""
    import spec_reference as spec

    t = spec.pixel_shift_products(x, shifts)
    return F.conv2d(torch.cat([x, t], dim=1), w, b, stride, w.shape[-1] // 2)


CASES = [  # (B, Ci, Co, H, W, K, Ka, stride, shift lengths)
    (2, 3, 5, 7, 6, 3, 1, 1, (1,)),
    (1, 4, 3, 9, 11, 3, 3, 2, (1, 2)),
    (2, 2, 4, 5, 8, 5, 3, 3, (2,)),
    (1, 3, 2, 6, 5, 1, 1, 1, (1,)),
    (3, 1, 6, 4, 4, 5, 5, 2, (1,)),
    (1, 5, 4, 13, 3, 3, 1, 3, (1, 2)),
    # Across the CUDA kernel's tiles (block_gemm.cuh): Co past kBM = 64, pixels past kBN = 64, and
    # S·C·Ka² = 360 and 96 reduction rows (several kBK = 32 slices).
    (1, 5, 65, 9, 9, 3, 3, 1, (1,)),
    (2, 3, 63, 8, 9, 3, 1, 1, (1, 2)),
    # CPU: Ka = 1 over blocks of rows (23·29 outputs: not a multiple of a block) and over groups of small
    # images at stride 3; Ka > 1 with length-1 shifts, whose opposite shifts share a product map.
    (1, 17, 19, 23, 29, 3, 1, 1, (1,)),
    (3, 6, 7, 10, 9, 3, 1, 3, (1,)),
    (2, 17, 9, 11, 7, 3, 3, 2, (1,)),
    (1, 6, 5, 7, 10, 5, 3, 1, (1,)),
    (1, 300, 3, 5, 4, 3, 3, 1, (1,)),  # more channels than one CPU convolution of product maps takes
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matches_folded_convolution(device, dtype, case):
    b, ci, co, h, w, k, ka, stride, lengths = case
    shifts = shift_offsets(lengths)
    x = torch.randn(b, ci, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    weight, bias = folded_weight(co, ci, k, ka, lengths, device=device)
    exact = one_conv(x, weight, bias, shifts, stride)
    out = xvolution_deployed(x.to(dtype), weight.to(dtype), bias.to(dtype), shifts, stride, ka)
    assert out.shape == (b, co, -(-h // stride), -(-w // stride)) and out.dtype == dtype
    same_dtype = xvolution_deployed_reference(x.to(dtype), weight.to(dtype), bias.to(dtype), shifts, stride, ka)
    assert_close_to_reference(out, exact, same_dtype)
    no_bias = xvolution_deployed(x.to(dtype), weight.to(dtype), None, shifts, stride, ka)
    assert_close_to_reference(no_bias, exact - bias.view(1, -1, 1, 1), same_dtype - bias.to(dtype).view(1, -1, 1, 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("ka", [1, 3])
def test_any_shift_set(device, dtype, ka):
    """Shifts in any order, repeated, unpaired (no opposite) or zero: one map may serve several shifts."""
    shifts = [(0, 1), (0, -1), (0, 1), (0, -1), (1, 0), (0, 0)]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 8, 9, dtype=torch.float64, generator=g).to(device)
    weight = torch.randn(6, 5 * (1 + len(shifts)), 3, 3, dtype=torch.float64, generator=g)
    if ka == 1:
        weight[:, 5:, [0, 0, 0, 1, 1, 2, 2, 2], [0, 1, 2, 0, 2, 0, 1, 2]] = 0
    weight, bias = weight.to(device), torch.randn(6, dtype=torch.float64, generator=g).to(device)
    for stride in (1, 2):
        exact = one_conv(x, weight, bias, shifts, stride)
        out = xvolution_deployed(x.to(dtype), weight.to(dtype), bias.to(dtype), shifts, stride, ka)
        same_dtype = xvolution_deployed_reference(x.to(dtype), weight.to(dtype), bias.to(dtype), shifts, stride, ka)
        assert_close_to_reference(out, exact, same_dtype)


@requires_native
@pytest.mark.parametrize("device", DEVICES)
def test_native_kernel_runs_and_reads_only_the_centre_taps(device):
    """The native op (not the reference) serves plain eval calls, and ignores the T(X) taps outside
    the centre Ka x Ka, which the fold leaves zero."""
    x = torch.randn(2, 3, 6, 7, device=device)
    weight, bias = folded_weight(4, 3, 3, 1, (1,), torch.float32, device)
    noisy = weight.clone()
    noisy[:, 3:, 0, 0] = 100.0
    out = torch.ops.translution_ext.xvolution_deployed(x, noisy, bias, [v for s in shift_offsets() for v in s], 1, 1)
    torch.testing.assert_close(out, one_conv(x, weight, bias, shift_offsets(), 1))


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    weight, bias = folded_weight(4, 2, 3, 1, (1,), torch.float32, device)
    out = xvolution_deployed(torch.randn(0, 2, 5, 5, device=device), weight, bias, shift_offsets(), 2, 1)
    assert out.shape == (0, 4, 3, 3)


def test_autograd_through_reference():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    weight, bias = folded_weight(3, 2, 3, 3, (1,))
    weight.requires_grad_()
    assert torch.autograd.gradcheck(lambda t, w: xvolution_deployed(t, w, bias, shift_offsets(), 2, 3), (x, weight))


@requires_native
def test_opcheck_and_compile():
    x = torch.randn(2, 3, 7, 6)
    weight, bias = folded_weight(4, 3, 3, 1, (1, 2), torch.float32)
    flat = [v for s in shift_offsets((1, 2)) for v in s]
    torch.library.opcheck(torch.ops.translution_ext.xvolution_deployed.default, (x, weight, bias, flat, 2, 1))
    torch.library.opcheck(torch.ops.translution_ext.xvolution_deployed.default, (x, weight, None, flat, 1, 3))
    torch._dynamo.reset()
    f = torch.compile(lambda t: xvolution_deployed(t, weight, bias, shift_offsets((1, 2)), 2, 1).relu(),
                      fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(x), one_conv(x, weight, bias, shift_offsets((1, 2)), 2).relu())


def _args(**change):
    args = dict(x=torch.randn(1, 2, 5, 5), weight=torch.randn(3, 18, 3, 3), bias=torch.randn(3),
                shifts=shift_offsets(), stride=1, pssa_kernel_size=1)
    args.update(change)
    return args


BAD = [
    (dict(x=torch.randn(2, 5, 5)), ValueError, r"x must be a 4-D tensor \(B, C, H, W\)"),
    (dict(x=torch.randint(0, 3, (1, 2, 5, 5))), TypeError, "x must have dtype float16, bfloat16, float32 or float64"),
    (dict(weight=torch.randn(3, 18, 3)), ValueError,
     r"weight must be a 4-D tensor \(Co, C\*\(1 \+ S\), K, K\) with an odd K"),
    (dict(weight=torch.randn(3, 18, 2, 2)), ValueError,
     r"weight must be a 4-D tensor .* with an odd K, got \(3, 18, 2, 2\)"),
    (dict(weight=torch.randn(3, 16, 3, 3)), ValueError,
     r"weight must have C\*\(1 \+ S\) = 18 input channels \(x has C = 2"),
    (dict(weight=torch.randn(3, 18, 3, 3, dtype=torch.float64)), TypeError, r"weight must have the dtype of x"),
    (dict(bias=torch.randn(4)), ValueError, r"bias must have shape \(Co,\) = \(3,\), got \(4,\)"),
    (dict(bias=torch.randn(3, dtype=torch.float64)), TypeError, r"bias must have the dtype of x"),
    (dict(stride=0), ValueError, "stride must be a positive int, got 0"),
    (dict(pssa_kernel_size=2), ValueError, r"pssa_kernel_size must be odd and in \[1, K = 3\], got 2"),
    (dict(pssa_kernel_size=5), ValueError, r"pssa_kernel_size must be odd and in \[1, K = 3\], got 5"),
]


@pytest.mark.parametrize("change,error,match", BAD)
def test_errors_name_the_argument(change, error, match):
    with pytest.raises(error, match="xvolution_deployed: " + match):
        xvolution_deployed(**_args(**change))


@requires_native
@pytest.mark.parametrize("change,error,match", BAD)
def test_native_errors_name_the_argument(change, error, match):
    a = _args(**change)
    flat = [v for s in a["shifts"] for v in s]
    with pytest.raises(error, match="xvolution_deployed: " + match):
        torch.ops.translution_ext.xvolution_deployed(a["x"], a["weight"], a["bias"], flat, a["stride"],
                                                     a["pssa_kernel_size"])
