"""The xvolution_fold op: the native routine against its pure-PyTorch counterpart, and its errors."""
from __future__ import annotations

import pytest
import torch

from translution_ext.ops.xvolution_fold import xvolution_fold_reference

from conftest import requires_native


@requires_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_fold_matches_reference(dtype):
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(4, 3, 3, 3, generator=g, dtype=dtype), torch.randn(4, 24, 1, 1, generator=g, dtype=dtype)]
    stats = [[torch.rand(4, generator=g, dtype=dtype) + 0.5 for _ in weights] for _ in range(4)]
    args = (weights, *stats, [1e-5, 1e-3], [0, 3], 27, 3)
    native = torch.ops.translution_ext.xvolution_fold(*args)
    ref = xvolution_fold_reference(*args)
    for a, b in zip(native, ref):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="every branch kernel must be odd and at most kernel_size = 1"):
        torch.ops.translution_ext.xvolution_fold(weights, *stats, [1e-5, 1e-3], [0, 3], 27, 1)
    with pytest.raises(ValueError, match=r"reads input channels \[3, 27\) outside in_channels = 20"):
        torch.ops.translution_ext.xvolution_fold(weights, *stats, [1e-5, 1e-3], [0, 3], 20, 3)


def _branches(dtype, seed=0):
    """A 3x3 conv branch on channels [0, 3), a 1x1 branch on [3, 27), a 1x1 branch on [0, 3); eval BatchNorms
    with non-trivial statistics and different eps."""
    g = torch.Generator().manual_seed(seed)
    branches = []
    for (ci, k, offset), eps in zip([(3, 3, 0), (24, 1, 3), (3, 1, 0)], [1e-5, 1e-3, 0.1]):
        bn = torch.nn.BatchNorm2d(4, eps=eps).to(dtype).eval()
        with torch.no_grad():
            for t in (bn.weight, bn.bias, bn.running_mean):
                t.copy_(torch.randn(4, generator=g, dtype=dtype))
            bn.running_var.copy_(torch.rand(4, generator=g, dtype=dtype) + 0.2)
        branches.append((torch.randn(4, ci, k, k, generator=g, dtype=dtype), bn, offset))
    return branches


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fold_matches_the_spec_steps(dtype):
    import spec_reference as spec
    from translution_ext.ops.xvolution_fold import xvolution_fold

    branches = _branches(dtype)
    w, b = xvolution_fold(branches, 27, 3)
    w_spec, b_spec = spec.fold([(wt, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps, off)
                                for wt, bn, off in branches], 27, 3)
    tol = dict(atol=1e-12, rtol=1e-12) if dtype == torch.float64 else dict(atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(w, w_spec.detach(), **tol)
    torch.testing.assert_close(b, b_spec.detach(), **tol)


def test_folded_convolution_equals_the_sum_of_the_branches():
    # The point of the fold (spec step 4): one convolution gives Σ_branches BN(conv(input channels)).
    import spec_reference as spec
    from translution_ext.ops.xvolution_fold import xvolution_fold

    branches = _branches(torch.float64, seed=1)
    x = torch.randn(2, 27, 5, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = sum(bn(spec.conv2d(x[:, off: off + wt.shape[1]], wt, None, 1, wt.shape[-1] // 2))
                   for wt, bn, off in branches)
    w, b = xvolution_fold(branches, 27, 3)
    torch.testing.assert_close(spec.conv2d(x, w, b, 1, 1), expected, atol=1e-10, rtol=1e-10)
