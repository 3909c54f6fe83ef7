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
