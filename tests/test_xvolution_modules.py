"""X-volution modules: re-parameterisation (deployed = training eval output), whole-model conversion,
errors, and the exact-SA variant."""
from __future__ import annotations

import random

import pytest
import torch

import translution_ext
from translution_ext.nn import XVolution


def randomize_bn_(module: torch.nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                n = bn.num_features
                bn.running_mean.copy_(torch.randn(n, generator=g))
                bn.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(n, generator=g))


def random_config(seed: int):
    rnd = random.Random(seed)
    k = rnd.choice([1, 3, 5])
    ci = rnd.randint(1, 6)
    return dict(in_channels=ci, out_channels=rnd.choice([ci, rnd.randint(1, 7)]), kernel_size=k,
                stride=rnd.choice([1, 2, 3]), shift_lengths=rnd.choice([(1,), (2,), (1, 2)]),
                pssa_kernel_size=rnd.choice([1, k, rnd.choice([p for p in (1, 3, 5) if p <= k])]),
                extra_branches=rnd.random() < 0.5), (rnd.randint(1, 3), rnd.randint(3, 11), rnd.randint(3, 11))


def test_random_configs_cover_the_cases():
    configs = [random_config(seed) for seed in range(60)]
    assert {c["stride"] for c, _ in configs} == {1, 2, 3}
    assert {(1,), (1, 2)} <= {c["shift_lengths"] for c, _ in configs}
    assert {c["extra_branches"] for c, _ in configs} == {False, True}
    assert any(c["pssa_kernel_size"] == 1 < c["kernel_size"] for c, _ in configs)
    assert any(c["pssa_kernel_size"] == c["kernel_size"] > 1 for c, _ in configs)
    assert any(h % 2 and w % 2 for _, (_, h, w) in configs)


@pytest.mark.parametrize("seed", range(60))
def test_deployed_equals_training_eval_output(seed):
    cfg, (b, h, w) = random_config(seed)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = XVolution(**cfg)
    randomize_bn_(model, g)
    model.eval()
    x = torch.randn(b, cfg["in_channels"], h, w, generator=g)
    expected = model(x)
    deployed = translution_ext.reparameterize_model(model)
    scale = max(expected.abs().max().item(), 1.0)
    with torch.no_grad():  # the native op (inference); with autograd the op's reference serves
        out = deployed(x)
    assert (out - expected).abs().max().item() <= 1e-5 * scale, cfg
    assert (deployed(x) - expected).abs().max().item() <= 1e-5 * scale, cfg
    # the original model is untouched (inplace=False) and the deployed one has one conv left
    assert not model.deployed and deployed.deployed
    assert [n for n, _ in deployed.named_children()] == ["deployed_conv"]


@pytest.mark.skipif(not translution_ext.has_native(), reason="native library not loaded")
def test_deployed_forward_runs_the_native_op():
    torch.manual_seed(0)
    model = XVolution(3, 4, 3, stride=2).eval().reparameterize()
    with torch.no_grad(), torch.profiler.profile() as prof:
        model(torch.randn(1, 3, 8, 8))
    names = {e.name for e in prof.events()}
    assert "translution_ext::xvolution_deployed" in names
    assert "translution_ext::pixel_shift_products" not in names and "aten::cat" not in names


def test_deployed_weight_with_outer_pssa_taps_is_refused():
    wide = XVolution(2, 3, 3, pssa_kernel_size=3, deploy=True)
    with torch.no_grad():
        wide.deployed_conv.weight.normal_()
    with pytest.raises(ValueError, match=r"non-zero T\(X\) taps outside the centre 1x1; build the module with the "
                                         r"pssa_kernel_size it was trained with \(pssa_kernel_size=1 here\)"):
        XVolution(2, 3, 3, deploy=True).load_state_dict(wide.state_dict())


def test_reparameterize_twice_and_state_dict_round_trip():
    torch.manual_seed(0)
    model = XVolution(3, 4, 3, shift_lengths=(1, 2), pssa_kernel_size=3, extra_branches=True).eval()
    randomize_bn_(model, torch.Generator().manual_seed(0))
    model.reparameterize()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.reparameterize()  # no-op
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    fresh = XVolution(3, 4, 3, shift_lengths=(1, 2), pssa_kernel_size=3, extra_branches=True, deploy=True)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_whole_model_conversion():
    torch.manual_seed(0)
    net = torch.nn.Sequential(XVolution(3, 8, 3), torch.nn.ReLU(), XVolution(8, 8, 3, stride=2, extra_branches=True))
    g = torch.Generator().manual_seed(1)
    randomize_bn_(net, g)
    net.eval()
    x = torch.randn(2, 3, 10, 10)
    deployed = translution_ext.reparameterize_model(net)
    torch.testing.assert_close(deployed(x), net(x), atol=1e-5, rtol=1e-5)
    assert all(m.deployed for m in deployed.modules() if isinstance(m, XVolution))
    same = translution_ext.reparameterize_model(net, inplace=True)
    assert same is net and all(m.deployed for m in net.modules() if isinstance(m, XVolution))


def test_errors():
    model = XVolution(2, 2, 3)
    with pytest.raises(RuntimeError, match="needs BatchNorm in eval mode"):
        model.reparameterize()
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int"):
        XVolution(2, 2, 4)
    with pytest.raises(ValueError, match=r"pssa_kernel_size must be <= kernel_size = 3"):
        XVolution(2, 2, 3, pssa_kernel_size=5)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2, H, W\)"):
        model(torch.randn(1, 3, 4, 4))


@pytest.mark.parametrize("stride,heads,hw", [(1, 1, (5, 6)), (2, 2, (7, 6)), (3, 4, (6, 8))])
def test_sa_variant_matches_literal_attention(stride, heads, hw):
    from translution_ext.nn import XVolutionSA

    torch.manual_seed(0)
    m = XVolutionSA(3, 8, 3, stride=stride, heads=heads).double()
    for bn in (m.bn_conv, m.bn_attn):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
    m.eval()
    x = torch.randn(2, 3, *hw, dtype=torch.float64, requires_grad=True)
    y = m(x)
    # Literal: every output pixel attends to every input pixel.
    q, k, v = m.qkv(x).chunk(3, dim=1)
    q = q[:, :, ::stride, ::stride]
    b, c, ho, wo = q.shape
    d = c // heads
    qh = q.reshape(b, heads, d, ho * wo)
    kh, vh = (t.reshape(b, heads, d, -1) for t in (k, v))
    weights = torch.softmax(torch.einsum("bhdi,bhdj->bhij", qh, kh) / d ** 0.5, dim=-1)
    attn = m.attn_out(torch.einsum("bhij,bhdj->bhdi", weights, vh).reshape(b, c, ho, wo))
    expected = m.bn_conv(m.conv(x)) + m.bn_attn(attn)
    assert y.shape == (2, 8, -(-hw[0] // stride), -(-hw[1] // stride))
    torch.testing.assert_close(y, expected)
    y.sum().backward()
    assert x.grad is not None and m.qkv.weight.grad is not None and m.attn_out.weight.grad is not None
    with pytest.raises(NotImplementedError, match="XVolutionSA cannot be re-parameterised"):
        m.reparameterize()
    with pytest.raises(NotImplementedError, match="use XVolution"):
        translution_ext.reparameterize_model(torch.nn.Sequential(m))
    with pytest.raises(ValueError, match="heads must be a positive divisor of out_channels = 8"):
        XVolutionSA(3, 8, heads=3)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, H, W\)"):
        m(torch.randn(1, 4, 5, 5, dtype=torch.float64))


@pytest.mark.parametrize("seed", [0, 1, 2, 5, 8, 28])  # 8 and 28 have the identity branch
def test_training_form_matches_the_spec(seed):
    # Y = BNc(Conv_K(X)) + BNa(Conv_Ka(T(X))) (+ 1x1 and identity branches), T(X) and the convolutions
    # from the spec's definitions (tests/spec_reference.py), BN in eval mode with non-trivial statistics.
    import spec_reference as spec

    cfg, (b, h, w) = random_config(seed)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = XVolution(**cfg).double()
    randomize_bn_(model, g)
    model.eval()
    x = torch.randn(b, cfg["in_channels"], h, w, generator=g, dtype=torch.float64)
    k, ka, s = cfg["kernel_size"], cfg["pssa_kernel_size"], cfg["stride"]
    shifts = spec.neighbour_shifts(cfg["shift_lengths"])
    # The module's channel order of T(X) is its own shift list; the set must be the spec's.
    assert sorted(model.shifts) == sorted(shifts)
    expected = (model.bn_conv(spec.conv2d(x, model.conv.weight, None, s, k // 2))
                + model.bn_pssa(spec.conv2d(spec.pixel_shift_products(x, model.shifts), model.pssa_conv.weight,
                                            None, s, ka // 2)))
    if cfg["extra_branches"]:
        expected = expected + model.bn_1x1(spec.conv2d(x, model.conv_1x1.weight, None, s, 0))
        if model.bn_identity is not None:
            expected = expected + model.bn_identity(x)
    torch.testing.assert_close(model(x), expected, atol=1e-10, rtol=1e-10)
