"""ACmix modules: the ResNet form against the spec written with explicit window offsets, and the weight loader."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from translution_ext import compat
from translution_ext.nn import ACmix


def spec_acmix(sd, x, *, heads, ka, kc, stride):
    """acmix.md, one window offset at a time (no unfold), on the authors' state dict."""
    q, k, v = (F.conv2d(x, sd[f"conv{i}.weight"], sd[f"conv{i}.bias"]) for i in (1, 2, 3))
    b, c, h, w = q.shape
    hd = c // heads
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    loc = torch.stack([torch.linspace(-1, 1, w, dtype=x.dtype)[None].expand(h, w),
                       torch.linspace(-1, 1, h, dtype=x.dtype)[:, None].expand(h, w)])[None]
    pe = F.conv2d(loc, sd["conv_p.weight"], sd["conv_p.bias"])
    p = ka // 2
    pad = lambda t: F.pad(t, (p, p, p, p), mode="reflect")  # noqa: E731
    at = lambda t, du, dv: t[..., du: du + (ho - 1) * stride + 1: stride, dv: dv + (wo - 1) * stride + 1: stride]  # noqa: E731
    qh = (q * hd ** -0.5).view(b, heads, hd, h, w)[..., ::stride, ::stride]
    kp, vp, pp = pad(k).view(b, heads, hd, h + 2 * p, w + 2 * p), pad(v).view(b, heads, hd, h + 2 * p, w + 2 * p), pad(pe)
    pe_c = pe[..., ::stride, ::stride][:, None]
    offsets = [(du, dv) for du in range(ka) for dv in range(ka)]  # row-major window positions
    logits = torch.stack([(qh * (at(kp, du, dv) + pe_c - at(pp, du, dv)[:, None])).sum(2) for du, dv in offsets], 2)
    a = logits.softmax(2)  # (b, heads, ka², ho, wo)
    out_att = sum(a[:, :, u, None] * at(vp, du, dv) for u, (du, dv) in enumerate(offsets)).reshape(b, c, ho, wo)
    z = torch.cat([t.reshape(b, heads, hd, h * w) for t in (q, k, v)], 1)  # channel t·Nh + n
    f = torch.einsum("ot,btds->bdos", sd["fc.weight"][:, :, 0, 0], z).reshape(b, hd * kc * kc, h, w)
    out_conv = F.conv2d(f, sd["dep_conv.weight"], None, stride, kc // 2, 1, hd)
    return sd["rate1"] * out_att + sd["rate2"] * out_conv


def random_official(cin, c, heads, ka, kc, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hd = c // heads
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype) * 0.5  # noqa: E731
    sd = {f"conv{i}.{n}": r(c, cin, 1, 1) if n == "weight" else r(c) for i in (1, 2, 3) for n in ("weight", "bias")}
    sd.update({"conv_p.weight": r(hd, 2, 1, 1), "conv_p.bias": r(hd), "fc.weight": r(kc * kc, 3 * heads, 1, 1),
               "dep_conv.weight": r(c, kc * kc, kc, kc), "rate1": r(1), "rate2": r(1)})
    return sd


@pytest.mark.parametrize("cin,c,heads,ka,kc,stride,hw", [
    (5, 8, 4, 7, 3, 1, (9, 8)), (6, 12, 3, 3, 3, 2, (8, 10)), (4, 8, 2, 5, 3, 2, (7, 9)), (3, 4, 1, 7, 5, 1, (8, 8)),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_spec_and_loads_authors_weights(cin, c, heads, ka, kc, stride, hw, dtype):
    sd = random_official(cin, c, heads, ka, kc, dtype=dtype)
    block = compat.load_official_acmix(sd, cin, c, kernel_att=ka, head=heads, kernel_conv=kc, stride=stride)
    block = block.to(dtype)
    x = torch.randn(2, cin, *hw, dtype=dtype, requires_grad=True)
    y = block(x)
    x_ref = x.detach().clone().requires_grad_()
    sd_ref = {k: v.clone().requires_grad_() for k, v in sd.items()}
    y_ref = spec_acmix(sd_ref, x_ref, heads=heads, ka=ka, kc=kc, stride=stride)
    tol = dict(atol=1e-10, rtol=1e-9) if dtype == torch.float64 else dict(atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(y, y_ref, **tol)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    # Parameter gradients sum over every pixel of the batch; in fp32 their rounding depends on the
    # summation order (thread partition), so they get a reduction-sized tolerance.
    gtol = tol if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x.grad, x_ref.grad, **gtol)
    for ours, theirs in compat._ACMIX_NAMES.items():
        torch.testing.assert_close(block.get_parameter(ours).grad, sd_ref[theirs].grad, **gtol, msg=ours)
    exported = compat.export_official_acmix(block)
    assert sorted(exported) == sorted(sd)


def test_initialisation_matches_the_reference():
    block = ACmix(8, 8, head=4)
    assert torch.equal(block.rate1, torch.tensor([0.5])) and torch.equal(block.rate2, torch.tensor([0.5]))
    assert block.dep_conv.bias is None
    w = block.dep_conv.weight
    for i in range(9):
        assert (w[:, i, i // 3, i % 3] == 1).all() and w[:, i].sum() == w.shape[0]


def test_errors():
    with pytest.raises(ValueError, match="out_planes must be divisible by head = 4"):
        ACmix(8, 10, head=4)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 8, H, W\)"):
        ACmix(8, 8)(torch.randn(1, 3, 9, 9))
    with pytest.raises(ValueError, match="must exceed kernel_att // 2 = 3"):
        ACmix(8, 8)(torch.randn(1, 8, 3, 9))
    with pytest.raises(ValueError, match="kernel_att must be a positive odd int, got 6"):
        ACmix(8, 8, kernel_att=6)
    with pytest.raises(ValueError, match="stride must be 1 or 2, got 3"):
        ACmix(8, 8, stride=3)
    sd = random_official(4, 8, 4, 7, 3)
    del sd["fc.weight"]
    with pytest.raises(ValueError, match=r"missing keys: \['fc.weight'\]"):
        compat.load_official_acmix(sd, 4, 8)


@pytest.mark.parametrize("stride,in_planes", [(1, 64), (2, 32)])
def test_bottleneck_values_and_training_step(stride, in_planes):
    # The ResNet bottleneck written out: 1x1 conv, BN, ReLU, ACmix (stride), BN, ReLU, 1x1 conv, BN,
    # plus the shortcut (projected when the stride or width changes), ReLU.  BN in eval mode with
    # non-trivial statistics, so that every stage changes the values.
    from translution_ext.nn import ACmixBottleneck

    torch.manual_seed(0)
    block = ACmixBottleneck(in_planes, 16, stride=stride, head=4).double()
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    block.eval()
    x = torch.randn(2, in_planes, 10, 10, dtype=torch.float64)
    y = F.relu(block.bn1(F.conv2d(x, block.conv1.weight)))
    y = F.relu(block.bn2(block.acmix(y)))
    y = block.bn3(F.conv2d(y, block.conv3.weight))
    shortcut = block.shortcut[1](F.conv2d(x, block.shortcut[0].weight, stride=stride)) if stride == 2 else x
    expected = F.relu(y + shortcut)
    assert expected.shape == (2, 64, 10 // stride, 10 // stride)
    torch.testing.assert_close(block(x), expected, atol=1e-12, rtol=1e-10)
    block.train()
    block(x).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


def spec_swin_acmix(block, x, shift):
    """The Swin form from acmix.md, window by window with explicit loops (fp64, small)."""
    b, h, w, c = x.shape
    m, nh = block.window_size, block.num_heads
    hd = c // nh
    qkv = F.linear(x, block.qkv.weight, block.qkv.bias)
    # conv path: fc over the (t·Nh + n) axis per slice d, then the grouped 3x3 conv
    z = qkv.reshape(b, h * w, 3 * nh, hd)
    f = torch.einsum("ot,bstd->bdos", block.fc.weight[:, :, 0, 0], z) + block.fc.bias[None, None, :, None]
    out_conv = F.conv2d(f.reshape(b, hd * 9, h, w), block.dep_conv.weight, None, 1, 1, 1, hd).permute(0, 2, 3, 1)
    region = lambda i, n: 0 if i < n - m else (1 if i < n - shift else 2)  # noqa: E731
    out = torch.zeros(b, h, w, c, dtype=x.dtype)
    for wy in range(0, h, m):
        for wx in range(0, w, m):
            toks = [(wy + i // m, wx + i % m) for i in range(m * m)]
            t = torch.stack([qkv[:, y, xx] for y, xx in toks], 1).view(b, m * m, 3, nh, hd)
            q, k, v = t[:, :, 0] * hd ** -0.5, t[:, :, 1], t[:, :, 2]
            logits = torch.einsum("bind,bjnd->bnij", q, k)
            for i, (yi, xi) in enumerate(toks):
                for j, (yj, xj) in enumerate(toks):
                    r = (yi - yj + m - 1) * (2 * m - 1) + (xi - xj + m - 1)
                    logits[:, :, i, j] += block.relative_position_bias_table[r]
                    if shift and (region(yi, h), region(xi, w)) != (region(yj, h), region(xj, w)):
                        logits[:, :, i, j] -= 100.0
            o = torch.einsum("bnij,bjnd->bind", logits.softmax(-1), v).reshape(b, m * m, c)
            o = F.linear(o, block.proj.weight, block.proj.bias)
            for i, (y, xx) in enumerate(toks):
                out[:, y, xx] = o[:, i]
    return block.rate1 * out + block.rate2 * out_conv


@pytest.mark.parametrize("shift", [0, 2])
def test_swin_form_matches_spec(shift):
    from translution_ext.nn import ACmixWindowAttention, shifted_window_mask

    torch.manual_seed(0)
    block = ACmixWindowAttention(12, 4, 3).double()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 8, 8, 12, dtype=torch.float64)
    mask = shifted_window_mask(8, 8, 4, shift).double() if shift else None
    torch.testing.assert_close(block(x, mask), spec_swin_acmix(block, x, shift), atol=1e-10, rtol=1e-9)
    # The state dict has the names and shapes of the reference's Swin module, and its index buffer
    # holds the Swin formula (row offset + M − 1)·(2M − 1) + (column offset + M − 1).
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == {
        "qkv.weight": (36, 12), "qkv.bias": (36,), "proj.weight": (12, 12), "proj.bias": (12,),
        "relative_position_bias_table": (49, 3), "relative_position_index": (16, 16), "fc.weight": (9, 9, 1, 1),
        "fc.bias": (9,), "dep_conv.weight": (12, 9, 3, 3), "rate1": (1,), "rate2": (1,)}
    m = 4
    expected_index = torch.tensor([[(i // m - j // m + m - 1) * (2 * m - 1) + (i % m - j % m + m - 1)
                                    for j in range(m * m)] for i in range(m * m)])
    assert torch.equal(block.relative_position_index.long(), expected_index)


def test_swin_form_errors():
    from translution_ext.nn import ACmixWindowAttention

    with pytest.raises(ValueError, match="dim must be divisible by num_heads = 5"):
        ACmixWindowAttention(12, 4, 5)
    block = ACmixWindowAttention(12, 4, 3)
    with pytest.raises(ValueError, match=r"x must have shape \(B, H, W, 12\) with H and W multiples of window_size = 4"):
        block(torch.randn(1, 6, 8, 12))
    with pytest.raises(ValueError, match=r"x must have shape \(B, H, W, 12\)"):
        block(torch.randn(1, 8, 8, 10))
