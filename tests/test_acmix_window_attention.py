"""The acmix_window_attention op: CPU and CUDA kernels against the float64 reference, gradcheck,
opcheck, torch.compile, saved memory and argument errors."""
from __future__ import annotations

import pytest
import torch

from translution_ext.nn import ACmix
from translution_ext.ops.acmix_window_attention import acmix_window_attention, acmix_window_attention_reference

from conftest import DEVICES, assert_close_to_reference, requires_native



def op_inputs(b=2, heads=2, hd=3, h=7, w=6, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, heads * hd, h, w, generator=g, dtype=dtype) for _ in range(3))
    pe = torch.randn(1, hd, h, w, generator=g, dtype=dtype)
    return [t.to(device) for t in (q, k, v, pe)]


def _grads(fn, inputs, grad):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    fn(*leaves).backward(grad)
    return [t.grad for t in leaves]


@requires_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("window,stride", [(7, 1), (3, 2), (5, 2), (1, 1), (3, 3)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_op_matches_reference_per_dtype(device, window, stride, dtype):
    """Output and all four gradients against the float64 reference, per dtype (CPU and CUDA kernels)."""
    q, k, v, pe = op_inputs(device=device)
    exact = acmix_window_attention_reference(q, k, v, pe, 2, window, stride)
    low = [t.to(dtype) for t in (q, k, v, pe)]
    assert_close_to_reference(acmix_window_attention(*low, 2, window, stride), exact,
                              acmix_window_attention_reference(*low, 2, window, stride))
    g = torch.randn_like(exact)
    exact_grads = _grads(lambda *t: acmix_window_attention_reference(*t, 2, window, stride), (q, k, v, pe), g)
    ref_grads = _grads(lambda *t: acmix_window_attention_reference(*t, 2, window, stride), low, g.to(dtype))
    op_grads = _grads(lambda *t: acmix_window_attention(*t, 2, window, stride), low, g.to(dtype))
    for ours, exact_g, ref_g in zip(op_grads, exact_grads, ref_grads):
        assert ours.dtype == dtype
        assert_close_to_reference(ours, exact_g, ref_g)


@requires_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("window,stride", [(3, 1), (5, 2)])
def test_op_gradcheck_and_opcheck(device, window, stride):
    q, k, v, pe = (t.requires_grad_() for t in op_inputs(b=1, hd=2, h=5, w=4, device=device))
    assert torch.autograd.gradcheck(lambda *t: acmix_window_attention(*t, 2, window, stride), (q, k, v, pe))
    args = (q.float(), k.float(), v.float(), pe[0].float(), 2, window, stride, 0.7)
    torch.library.opcheck(torch.ops.translution_ext.acmix_window_attention.default, args)


@requires_native
@pytest.mark.parametrize("device", DEVICES)
def test_op_is_deterministic_and_handles_empty_batches(device):
    q, k, v, pe = (t.float().requires_grad_() for t in op_inputs(b=2, h=9, w=8, device=device))
    runs = []
    for _ in range(2):
        out = acmix_window_attention(q, k, v, pe, 2, 7, 1)
        runs.append([out, *torch.autograd.grad(out.square().sum(), (q, k, v, pe))])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    empty = [t.detach()[:0] if i < 3 else t.detach() for i, t in enumerate((q, k, v, pe))]
    assert acmix_window_attention(*empty, 2, 7, 1).shape == (0, 6, 9, 8)


@requires_native
def test_backward_op_checks_its_arguments():
    q, k, v, pe = op_inputs(dtype=torch.float32)
    out, attn = torch.ops.translution_ext.acmix_window_attention(q, k, v, pe[0], 2, 3, 1, 0.5)
    backward = torch.ops.translution_ext.acmix_window_attention_backward
    with pytest.raises(TypeError, match="attn must have dtype Float"):
        backward(out, q, k, v, pe[0], attn.double(), 2, 3, 1, 0.5)
    with pytest.raises(ValueError, match=r"grad_out must have shape \(2, 6, 7, 6\)"):
        backward(out[:, :, :3], q, k, v, pe[0], attn, 2, 3, 1, 0.5)
    with pytest.raises(ValueError, match=r"attn must have shape \(B, heads, window²"):
        backward(out, q, k, v, pe[0], attn[:, :, :4], 2, 3, 1, 0.5)


@requires_native
def test_op_compile_and_memory():
    torch._dynamo.reset()
    block = ACmix(8, 8, head=2)
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), block(x))
    # autograd keeps the softmax weights (B, heads, 49, H, W), never a (B, C, 49, H, W) unfold
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    assert sum(storages.values()) < 2 * 8 * 49 * 81 * 4


@requires_native
@pytest.mark.parametrize("change,match", [
    (lambda a: a.update(k=a["k"][:, :, :5]), r"k must have the shape of q"),
    (lambda a: a.update(heads=4), "heads must divide C == 6"),
    (lambda a: a.update(window=4), "window must be a positive odd int"),
    (lambda a: a.update(pe=a["pe"][:, :2]), r"pe must have shape \(hd, H, W\) = \(3, 7, 6\)"),
])
def test_op_errors(change, match):
    q, k, v, pe = op_inputs()
    args = dict(q=q, k=k, v=v, pe=pe, heads=2, window=3, stride=1)
    change(args)
    with pytest.raises(ValueError, match=match):
        acmix_window_attention(**args)


# ---- The op against the spec's attention path written per output pixel and window position
# (tests/spec_reference.py: its own reflection rule, window order and position term).
SPEC_CASES = [  # (heads, hd, H, W, window, stride)
    (2, 3, 5, 6, 3, 1),
    (1, 4, 7, 5, 5, 2),
    (2, 2, 4, 4, 7, 1),  # the window reflects across the whole image
    (3, 2, 6, 7, 3, 3),
]


@pytest.mark.parametrize("device", DEVICES)  # without the native library: the op's Python fallback
@pytest.mark.parametrize("heads,hd,h,w,window,stride", SPEC_CASES)
def test_op_matches_the_spec_loops(device, heads, hd, h, w, window, stride):
    import spec_reference as spec

    q, k, v, pe = op_inputs(b=2, heads=heads, hd=hd, h=h, w=w, seed=5)
    pe = pe * 3  # a large position term, so that its sign and centre matter
    expected_in = [t.clone().requires_grad_() for t in (q, k, v, pe)]
    ours_in = [t.to(device).requires_grad_() for t in (q, k, v, pe)]
    expected = spec.acmix_window_attention(*expected_in, heads, window, stride)
    out = acmix_window_attention(*ours_in, heads, window, stride)
    torch.testing.assert_close(out.cpu(), expected, atol=1e-12, rtol=1e-10)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    out.backward(grad.to(device))
    expected.backward(grad)
    for name, a, b in zip("qkv", ours_in, expected_in):
        torch.testing.assert_close(a.grad.cpu(), b.grad, atol=1e-12, rtol=1e-10, msg=name)
    torch.testing.assert_close(ours_in[3].grad.cpu(), expected_in[3].grad, atol=1e-12, rtol=1e-10, msg="pe")


@pytest.mark.parametrize("device", DEVICES)
def test_more_pixels_than_one_thread_block_match_the_spec_loops(device):
    # 2 * 2 * 9 * 8 = 288 (batch*head, pixel) threads: more than one 256-thread block of the CUDA kernels.
    import spec_reference as spec

    q, k, v, pe = op_inputs(b=2, heads=2, hd=2, h=9, w=8, seed=6)
    expected = spec.acmix_window_attention(q, k, v, pe, 2, 3, 1)
    torch.testing.assert_close(acmix_window_attention(*(t.to(device) for t in (q, k, v, pe)), 2, 3, 1).cpu(),
                               expected, atol=1e-12, rtol=1e-10)


# Shapes whose pixel rows, output rows and channels are not multiples of the CPU kernel's vector
# (16 floats), row (4) and channel (6, 5) blocks, for every window and stride.
ISA_CASES = [  # (heads, hd, H, W, window, stride)
    (1, 5, 17, 19, 7, 1),
    (2, 7, 9, 33, 5, 2),
    (1, 13, 11, 16, 3, 3),
    (2, 3, 6, 5, 7, 3),
    (1, 64, 14, 14, 7, 1),
    (1, 6, 7, 41, 9, 1),  # wider than one shift_dot tile of window columns
    (1, 4, 18, 17, 3, 3),  # no window reaches the last row: its k and v gradients are zero
]


@requires_native
def test_unknown_cpu_isa_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRANSLUTION_EXT_CPU_ISA", "sse9")
    q, k, v, pe = op_inputs(b=1, heads=2, hd=4, h=5, w=5, seed=1)
    with pytest.raises(ValueError, match="TRANSLUTION_EXT_CPU_ISA must be unset or one of avx512, avx2, baseline, got 'sse9'"):
        acmix_window_attention(q, k, v, pe, 2, 3, 1)


@requires_native
@pytest.mark.parametrize("isa", ["best", "avx2", "baseline"])
@pytest.mark.parametrize("heads,hd,h,w,window,stride", ISA_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_builds_match_the_reference(monkeypatch, isa, heads, hd, h, w, window, stride, dtype):
    """Every build of the CPU products (AVX-512, AVX2, baseline; TRANSLUTION_EXT_CPU_ISA caps the
    one picked), against the float64 reference: output and the four gradients."""
    if isa != "best":
        monkeypatch.setenv("TRANSLUTION_EXT_CPU_ISA", isa)
    q, k, v, pe = op_inputs(b=2, heads=heads, hd=hd, h=h, w=w, seed=11)
    exact_in = [t.clone().requires_grad_() for t in (q, k, v, pe)]
    ours_in = [t.to(dtype).requires_grad_() for t in (q, k, v, pe)]
    exact = acmix_window_attention_reference(*exact_in, heads, window, stride)
    out = acmix_window_attention(*ours_in, heads, window, stride)
    tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out.double(), exact.detach(), **tol)
    grad = torch.randn(exact.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact.backward(grad)
    out.backward(grad.to(dtype))
    for name, a, b in zip("q k v pe".split(), ours_in, exact_in):
        torch.testing.assert_close(a.grad.double(), b.grad, **tol, msg=name)
