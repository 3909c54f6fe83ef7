"""Translution and α-Translution blocks against the spec reference (tests/translution_reference.py)."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import torch

import translution_ext
from translution_ext import compat
from translution_ext.nn import AlphaTranslution, Translution

from conftest import requires_native
import translution_reference as spec

VARIANTS = ["qkv", "qk", "qv", "kv", "q", "k", "v"]
# (layout, constructor size, actual size or None); the second of each pair is a smaller input.
LAYOUTS = [
    ("1d", 5, None), ("1d", 6, 4),
    ("causal", 5, None), ("causal", 6, 4),
    ("2d", (3, 2), None), ("2d", (3, 3), (2, 3)),
    ("2d_cls", (2, 3), None), ("2d_cls", (3, 3), (3, 2)),
]
DIM, HEADS, DIM_HEAD, DIM_RELENC = 12, 2, 4, 3


def build(is_alpha: bool, layout: str, size, relative: str, backend: str = "auto", **kw):
    where = dict(grid=size) if layout.startswith("2d") else dict(max_len=size)
    if is_alpha:
        return AlphaTranslution(DIM, HEADS, DIM_HEAD, layout=layout, relative=relative, backend=backend,
                                dim_relenc=DIM_RELENC, **where, **kw)
    return Translution(DIM, HEADS, DIM_HEAD, layout=layout, relative=relative, backend=backend, **where, **kw)


def num_tokens(layout, size, actual):
    s = actual or size
    if layout.startswith("2d"):
        return s[0] * s[1] + (layout == "2d_cls")
    return s


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial LayerNorm and bias values so that every parameter matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if name == "norm.weight" else 0.0))


def run_pair(alpha, layout, size, actual, relative, dtype, backend="auto", seed=0):
    torch.manual_seed(seed)
    block = build(alpha, layout, size, relative, backend).to(dtype)
    randomize_(block, seed)
    x = torch.randn(2, num_tokens(layout, size, actual), DIM, dtype=dtype, requires_grad=True)
    grid = actual if (actual is not None and layout.startswith("2d")) else None
    y = block(x, grid=grid)
    sd = {k: v.detach().clone().requires_grad_(v.is_floating_point() and k != "causal")
          for k, v in compat.export_official_attention(block).items()}
    x_ref = x.detach().clone().requires_grad_()
    y_ref = spec.reference_forward(sd, x_ref, alpha=alpha, layout=layout, size=size, heads=HEADS,
                                   dim_head=DIM_HEAD, relative=relative, actual=actual)
    return block, x, y, sd, x_ref, y_ref


TOL = {torch.float64: dict(atol=1e-10, rtol=1e-9), torch.float32: dict(atol=2e-5, rtol=2e-5)}


# (block, dtype, backend): every backend of each block.
BLOCK_BACKENDS = [
    pytest.param(alpha, dtype, backend, id=f"{'alpha' if alpha else 'translution'}-{tag}")
    for alpha in (False, True)
    for dtype, backend, tag in [(torch.float64, "fused", "f64-fused"), (torch.float64, "native", "f64-native"),
                                (torch.float64, "reference", "f64-reference"), (torch.float32, "auto", "f32-auto")]
]


@pytest.mark.parametrize("layout,size,actual", LAYOUTS)
@pytest.mark.parametrize("relative", VARIANTS)
@pytest.mark.parametrize("alpha,dtype,backend", BLOCK_BACKENDS)
def test_block_matches_spec_forward_and_grads(alpha, relative, layout, size, actual, dtype, backend):
    if backend in ("native", "fused") and not translution_ext.has_native():
        pytest.skip("native library not loaded")
    block, x, y, sd, x_ref, y_ref = run_pair(alpha, layout, size, actual, relative, dtype, backend)
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, **TOL[dtype])
    names = compat._official_names(block)
    for ours, theirs in names.items():
        ours_grad = block.get_parameter(ours).grad
        torch.testing.assert_close(ours_grad, sd[theirs].grad, **TOL[dtype], msg=lambda m: f"{ours}: {m}")


@pytest.mark.parametrize("alpha", [False, True], ids=["translution", "alpha"])
@pytest.mark.parametrize("layout,size,actual", [("causal", 4, 3), ("2d_cls", (2, 2), None)])
def test_gradcheck_float64(alpha, layout, size, actual):
    torch.manual_seed(0)
    block = build(alpha, layout, size, "qkv").double()
    x = torch.randn(1, num_tokens(layout, size, actual), DIM, dtype=torch.float64, requires_grad=True)
    tables = [block.get_parameter(f"{r}_table") for r in "qkv"]

    def f(x, *ts):
        return torch.func.functional_call(block, {f"{r}_table": t for r, t in zip("qkv", ts)}, (x,))

    assert torch.autograd.gradcheck(f, (x, *[t.detach().requires_grad_() for t in tables]))


def test_table_shapes_and_init():
    block = Translution(DIM, HEADS, DIM_HEAD, layout="2d_cls", grid=(3, 4))
    r = (2 * 3 - 1) * (2 * 4 - 1) + 3
    assert block.num_classes == r
    for role in "qkv":
        t = block.get_parameter(f"{role}_table")
        assert t.shape == (r, DIM, HEADS * DIM_HEAD)
        bound = spec.kaiming_bound(DIM * HEADS * DIM_HEAD)
        assert t.abs().max() <= bound and t.abs().max() > 0.9 * bound
    alpha = AlphaTranslution(DIM, HEADS, DIM_HEAD, layout="causal", max_len=7, relative="kv", dim_relenc=5)
    assert alpha.k_table.shape == (7, 10, 10) and not hasattr(alpha, "q_table")
    assert set(alpha.state_dict()) == {"norm.weight", "norm.bias", "qkv_proj.weight", "q_relenc.weight",
                                       "k_relenc.weight", "v_relenc.weight", "v_relenc_out.weight", "k_table",
                                       "v_table", "out_proj.weight", "out_proj.bias"}
    # heads == 1 and dim_head == dim: no output projection, as in the reference.
    assert isinstance(Translution(8, 1, 8, layout="1d", max_len=3).out_proj, torch.nn.Identity)


def test_alpha_weights_the_relative_branch():
    torch.manual_seed(0)
    full = build(True, "1d", 4, "qkv", alpha=1.0)
    none = build(True, "1d", 4, "qkv", alpha=0.0)
    none.load_state_dict(full.state_dict())
    x = torch.randn(2, 4, DIM)
    plain = torch.nn.functional.scaled_dot_product_attention(
        *(t.unflatten(-1, (HEADS, DIM_HEAD)).transpose(1, 2) for t in none.qkv_proj(none.norm(x)).chunk(3, -1)))
    torch.testing.assert_close(none(x), none.out_proj(plain.transpose(1, 2).flatten(-2)))
    assert not torch.allclose(full(x), none(x))


def test_smaller_input_uses_the_same_rows():
    torch.manual_seed(0)
    block = build(False, "2d_cls", (3, 3), "qkv").double()
    randomize_(block)
    x = torch.randn(1, 1 + 2 * 3, DIM, dtype=torch.float64)
    # A 2x3 grid inside the 3x3 one: the same offsets pick the same rows ...
    _, k, q = spec.spec_rows("2d_cls", (3, 3), (2, 3))
    assert torch.equal(k, block.layout.index((2, 3)).key) and torch.equal(q, block.layout.index((2, 3)).query)
    # ... and the output is the spec's on the 3x3 tables with the 2x3 positions.
    expected = spec.reference_forward(compat.export_official_attention(block), x, alpha=False, layout="2d_cls",
                                      size=(3, 3), heads=HEADS, dim_head=DIM_HEAD, relative="qkv", actual=(2, 3))
    torch.testing.assert_close(block(x, grid=(2, 3)), expected, **TOL[torch.float64])


@pytest.mark.parametrize("layout,size,n,grid,match", [
    ("1d", 4, 5, None, r"x.size\(1\) must be <= max_len = 4"),
    ("causal", 4, 6, None, r"x.size\(1\) must be <= max_len = 4"),
    ("2d", (2, 3), 5, None, r"pass grid=\(h, w\)"),
    ("2d", (2, 3), 12, (3, 4), r"grid must be <= \(2, 3\)"),
    ("2d_cls", (2, 3), 6, (2, 3), r"x.size\(1\) must be h\*w \+ 1 = 7"),
    ("1d", 4, 3, (1, 3), "grid is only for the 2D layouts"),
])
def test_input_errors_say_what_is_wrong(layout, size, n, grid, match):
    block = build(False, layout, size, "qkv")
    with pytest.raises(ValueError, match=match):
        block(torch.randn(1, n, DIM), grid=grid)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"x must have shape \(B, N, dim=12\)"):
        build(False, "1d", 4, "qkv")(torch.randn(4, DIM))
    with pytest.raises(ValueError, match=r"x must have shape \(B, N, dim=12\)"):
        build(False, "1d", 4, "qkv")(torch.randn(1, 4, DIM + 1))
    with pytest.raises(ValueError, match="relative must be a non-empty subset of 'qkv'"):
        build(False, "1d", 4, "qx")
    with pytest.raises(ValueError, match="layout must be one of"):
        Translution(DIM, layout="3d", max_len=4)
    with pytest.raises(ValueError, match=r"needs grid=\(Hg, Wg\)"):
        Translution(DIM, layout="2d", max_len=4)
    with pytest.raises(ValueError, match="needs max_len"):
        Translution(DIM, layout="causal")
    with pytest.raises(ValueError, match="backend must be one of 'auto', 'fused', 'native', 'reference'"):
        Translution(DIM, layout="1d", max_len=4, backend="fast")
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        AlphaTranslution(DIM, layout="1d", max_len=4, alpha=1.5)


def test_forced_native_without_library_says_why():
    code = (
        "import torch, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from translution_ext.nn import Translution\n"
        "m = Translution(8, 2, 4, layout='1d', max_len=3, backend='native')\n"
        "try:\n"
        "    m(torch.randn(1, 3, 8))\n"
        "except RuntimeError as e:\n"
        "    print('ERR', e)\n"
        "print('AUTO', Translution(8, 2, 4, layout='1d', max_len=3)(torch.randn(1, 3, 8)).shape)\n"
    )
    env = dict(os.environ, TRANSLUTION_EXT_DISABLE_NATIVE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "backend='native' cannot run: the native library is not loaded: disabled by" in out
    assert "AUTO torch.Size([1, 3, 8])" in out


@pytest.mark.parametrize("alpha", [False, True], ids=["translution", "alpha"])
def test_state_dict_round_trip(alpha):
    torch.manual_seed(0)
    block = build(alpha, "2d_cls", (2, 2), "kv")
    buf = io.BytesIO()
    torch.save(block.state_dict(), buf)
    other = build(alpha, "2d_cls", (2, 2), "kv")
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    x = torch.randn(2, 5, DIM)
    torch.testing.assert_close(other(x), block(x), rtol=0, atol=0)
    assert not any("index" in k for k in block.state_dict()), "index maps are derived, not saved"


@pytest.mark.parametrize("alpha", [False, True], ids=["translution", "alpha"])
def test_dropout_only_in_training(alpha):
    torch.manual_seed(0)
    block = build(alpha, "1d", 5, "qkv", dropout=0.5)
    x = torch.randn(2, 5, DIM)
    block.eval()
    torch.testing.assert_close(block(x), block(x))
    block.train()
    assert not torch.allclose(block(x), block(x))


def autocast_pair(alpha, seed=0):
    """A block and an input for the autocast tests, with non-trivial LayerNorm and bias values, q, k
    weights 3x their initial size (scores of a few units, so that the softmax scale matters: at
    initialisation the weights are near uniform and a 20% wrong scale moves the output by 0.2%) and
    the relative v tables 2x (so that α-Translution's small relative output weighs in)."""
    torch.manual_seed(seed)
    block = build(alpha, "2d_cls", (2, 3), "qkv")
    randomize_(block, seed)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.split(".")[0] in ("q_table", "k_table", "qkv_proj", "q_relenc", "k_relenc"):
                p.mul_(3)
            if name == "v_table":
                p.mul_(2)
    return block, torch.randn(2, 7, DIM)


def spec_forward(block, x, alpha):
    return spec.reference_forward(compat.export_official_attention(block), x, alpha=alpha, layout="2d_cls",
                                  size=(2, 3), heads=HEADS, dim_head=DIM_HEAD, relative="qkv")


@pytest.mark.parametrize("alpha", [False, True], ids=["translution", "alpha"])
def test_autocast_bfloat16(alpha):
    """Output and input gradient under bf16 autocast within 2x the error of the spec reference run
    under the same autocast (the project's low-precision rule), both against float64."""
    from conftest import assert_close_to_reference

    block, x = autocast_pair(alpha)
    exact_block = build(alpha, "2d_cls", (2, 3), "qkv").double()
    exact_block.load_state_dict(block.state_dict())
    x64 = x.double().requires_grad_()
    exact = exact_block(x64)
    (exact_grad,) = torch.autograd.grad(exact.sum(), x64)
    x_ref = x.clone().requires_grad_()
    x_ours = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x_ours)
        y_ref = spec_forward(block, x_ref, alpha)
    assert y.dtype == torch.bfloat16
    assert_close_to_reference(y, exact.detach(), y_ref)
    (ref_grad,) = torch.autograd.grad(y_ref.float().sum(), x_ref)
    y.float().sum().backward()
    # x and its gradient are float32 (autocast casts only inside); both gradients rounded to bf16 so
    # that the bf16 rule applies.
    assert_close_to_reference(x_ours.grad.to(torch.bfloat16), exact_grad, ref_grad.to(torch.bfloat16))
    assert all(p.grad is not None for p in block.parameters())


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("alpha", [False, True], ids=["translution", "alpha"])
def test_torch_compile_fullgraph(alpha, backend):
    torch.manual_seed(0)
    torch._dynamo.reset()
    block = build(alpha, "causal", 6, "qkv")
    x = torch.randn(2, 6, DIM, requires_grad=True)
    expected = block(x)
    (gx_expected,) = torch.autograd.grad(expected.sum(), x)
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    y = compiled(x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, gx_expected, atol=1e-5, rtol=1e-5)
    # A shorter sequence through the same compiled module.
    torch.testing.assert_close(compiled(x[:, :4]), block(x[:, :4]), atol=1e-5, rtol=1e-5)


@requires_native
def test_native_and_reference_backends_agree_in_float32():
    torch.manual_seed(0)
    native = build(False, "2d_cls", (3, 3), "qkv", backend="native")
    ref = build(False, "2d_cls", (3, 3), "qkv", backend="reference")
    ref.load_state_dict(native.state_dict())
    x = torch.randn(3, 10, DIM)
    torch.testing.assert_close(native(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout,size", [("causal", 6), ("2d_cls", (2, 3))])
@pytest.mark.parametrize("alpha", [False, True], ids=["translution", "alpha"])
def test_half_precision_within_twice_the_reference_error(alpha, layout, size, dtype):
    from conftest import assert_close_to_reference

    torch.manual_seed(0)
    block = build(alpha, layout, size, "qkv").double()
    randomize_(block)
    x = torch.randn(2, num_tokens(layout, size, None), DIM, dtype=torch.float64)
    sd = compat.export_official_attention(block)
    kw = dict(alpha=alpha, layout=layout, size=size, heads=HEADS, dim_head=DIM_HEAD, relative="qkv")
    exact = spec.reference_forward(sd, x, **kw)
    same_dtype_ref = spec.reference_forward({k: v.to(dtype) for k, v in sd.items()}, x.to(dtype), **kw)
    assert_close_to_reference(block.to(dtype)(x.to(dtype)), exact, same_dtype_ref)


@pytest.mark.parametrize("alpha", [False, True], ids=["translution", "alpha"])
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_block_matches_cpu(alpha):
    torch.manual_seed(0)
    block = build(alpha, "2d_cls", (3, 3), "qkv")
    x = torch.randn(2, 10, DIM, requires_grad=True)
    y = block(x)
    y.sum().backward()
    cuda_block = build(alpha, "2d_cls", (3, 3), "qkv").cuda()
    cuda_block.load_state_dict(block.state_dict())
    xc = x.detach().cuda().requires_grad_()
    yc = cuda_block(xc, grid=None)
    yc.sum().backward()
    torch.testing.assert_close(yc.cpu(), y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(xc.grad.cpu(), x.grad, atol=1e-4, rtol=1e-4)
    for (name, p), pc in zip(block.named_parameters(), cuda_block.parameters()):
        torch.testing.assert_close(pc.grad.cpu(), p.grad, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("weight", [0.0, 0.2, 0.75, 1.0])
@pytest.mark.parametrize("relative", ["qkv", "qk", "kv", "v"])
@pytest.mark.parametrize("layout,size", [("causal", 5), ("2d_cls", (2, 2))])
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_alpha_blocks_match_the_spec_at_every_alpha(backend, layout, size, relative, weight):
    # α weighs the two score terms and the two outputs: (1 − α, α); the spec's reference is α = 0.5.
    if backend == "fused" and not translution_ext.has_native():
        pytest.skip("native library not loaded")
    torch.manual_seed(1)
    block = build(True, layout, size, relative, backend, alpha=weight).double()
    randomize_(block, 1)
    x = torch.randn(2, num_tokens(layout, size, None), DIM, dtype=torch.float64)
    block.alpha = 0.5  # the export names the weights; it accepts only the reference code's α
    sd = compat.export_official_attention(block)
    block.alpha = weight
    expected = spec.alpha_translution(sd, x, layout=layout, size=size,
                                      heads=HEADS, dim_head=DIM_HEAD, relative=relative, weight=weight)
    torch.testing.assert_close(block(x), expected, **TOL[torch.float64])
