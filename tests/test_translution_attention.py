"""The fused translution_attention op: reference equality, gradcheck, opcheck, edges, memory, errors."""
from __future__ import annotations

import re

import pytest
import torch

import translution_ext
from translution_ext import indexing
from translution_ext.ops.translution_attention import translution_attention_reference
from translution_ext.ops import translution_attention

from conftest import DEVICES, requires_emulator, requires_native

pytestmark = requires_native
HEADS, C, D = 2, 6, 8


def maps(layout: str, size):
    if layout == "1d":
        return indexing.offset_index_1d(size)
    if layout == "causal":
        return indexing.offset_index_causal_1d(size)
    if layout == "2d":
        return indexing.offset_index_2d(size)
    return indexing.offset_index_2d_cls(size)


def inputs(layout, size, relative, dtype=torch.float64, batch=2, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    ix = maps(layout, size)
    n = ix.key.shape[0]
    x = torch.randn(batch, n, C, generator=g, dtype=dtype)
    kw = dict(key_index=ix.key, query_index=ix.query, heads=HEADS, causal=layout == "causal")
    for role in "qkv":
        if role in relative:
            kw[f"{role}_table"] = torch.randn(ix.num_classes, C, D, generator=g, dtype=dtype) * C ** -0.5
        else:
            kw[role] = torch.randn(batch, n, D, generator=g, dtype=dtype)
    return x.to(device), {k: v.to(device) if torch.is_tensor(v) else v for k, v in kw.items()}


def differentiable(x, kw):
    x = x.clone().requires_grad_()
    kw = {k: (v.clone().requires_grad_() if k not in ("key_index", "query_index") and torch.is_tensor(v) else v)
          for k, v in kw.items()}
    return x, kw


def unfused(x, kw):
    parts = [(kw.get(r), x if f"{r}_table" in kw else None, kw.get(f"{r}_table")) for r in "qkv"]
    scale = (D // HEADS) ** -0.5
    return translution_attention_reference(parts, kw["key_index"], kw["query_index"], HEADS, scale, kw["causal"])


CASES = [("1d", 40), ("1d", 1), ("causal", 5), ("causal", 37), ("2d", (3, 4)), ("2d_cls", (2, 3))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("relative", ["qkv", "qk", "qv", "kv", "q", "k", "v"])
@pytest.mark.parametrize("layout,size", CASES)
def test_matches_reference_forward_and_backward(layout, size, relative, device):
    # 40 and 37 tokens are not multiples of the 32-row query blocks; causal 5 is shorter than one.
    x, kw = inputs(layout, size, relative, device=device)
    x1, kw1 = differentiable(x, kw)
    x2, kw2 = differentiable(x, kw)
    out = translution_attention(x1, **kw1)
    ref = unfused(x2, kw2)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-12, rtol=1e-10)
    for name, value in kw1.items():
        if torch.is_tensor(value) and value.requires_grad:
            torch.testing.assert_close(value.grad, kw2[name].grad, atol=1e-12, rtol=1e-10, msg=name)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("layout,size,relative", [("2d_cls", (3, 4), "qkv"), ("causal", 37, "kv"), ("1d", 9, "v")])
def test_cpu_forward_by_row_blocks_and_by_groups(layout, size, relative, threads):
    # One thread runs query-row blocks; several run whole pair groups per thread (small score
    # matrices) and sum per-thread value buffers: both match the reference.
    x, kw = inputs(layout, size, relative)
    x1, kw1 = differentiable(x, kw)
    x2, kw2 = differentiable(x, kw)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = translution_attention(x1, **kw1)
        out.backward(torch.ones_like(out))
    finally:
        torch.set_num_threads(previous)
    ref = unfused(x2, kw2)
    ref.backward(torch.ones_like(ref))
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout,size,relative", [("2d_cls", (3, 3), "qkv"), ("causal", 9, "kv")])
def test_lower_precision_within_twice_the_reference_error(layout, size, relative, dtype, device):
    from conftest import assert_close_to_reference

    x, kw = inputs(layout, size, relative, device=device)
    exact = unfused(x, kw)
    low = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kw.items()}
    assert_close_to_reference(translution_attention(x.to(dtype), **low), exact, unfused(x.to(dtype), low))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout,size,relative", [("causal", 4, "qkv"), ("2d_cls", (2, 2), "kv"), ("1d", 3, "q")])
def test_gradcheck_float64(layout, size, relative, device):
    x, kw = inputs(layout, size, relative, batch=1, device=device)
    names = [k for k, v in kw.items() if torch.is_tensor(v) and v.is_floating_point()]
    fixed = {k: v for k, v in kw.items() if k not in names}

    def f(x, *tensors):
        return translution_attention(x, **fixed, **dict(zip(names, tensors)))

    args = [x.requires_grad_()] + [kw[n].requires_grad_() for n in names]
    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout,size,relative", [("causal", 6, "qkv"), ("2d_cls", (2, 2), "qv")])
def test_opcheck(layout, size, relative, device):
    x, kw = inputs(layout, size, relative, dtype=torch.float32, device=device)
    args = (*(kw.get(r) for r in "qkv"), *(x if f"{r}_table" in kw else None for r in "qkv"),
            *(kw.get(f"{r}_table") for r in "qkv"), kw["key_index"], kw["query_index"], HEADS,
            (D // HEADS) ** -0.5, kw["causal"])
    args = tuple(a.requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
    torch.library.opcheck(torch.ops.translution_ext.translution_attention.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    # Every output and gradient element has one writer, which adds its terms in a fixed order.
    x, kw = inputs("2d_cls", (4, 4), "qkv", dtype=torch.float32, device=device)
    grads = []
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(2):
            x1, kw1 = differentiable(x, kw)
            out = translution_attention(x1, **kw1)
            out.square().sum().backward()
            grads.append(torch.cat([out.flatten(), x1.grad.flatten()]
                                   + [kw1[f"{r}_table"].grad.flatten() for r in "qkv"]))
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(grads[0], grads[1])


def test_saves_no_per_pair_tensors():
    # Everything autograd keeps must be O(B·N·(C + D) + parameters), not O(N²·D).
    x, kw = inputs("1d", 96, "qkv", dtype=torch.float32)
    x, kw = differentiable(x, kw)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = translution_attention(x, **kw)
    n = x.shape[1]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved if t.is_floating_point()}
    float_bytes = sum(storages.values())
    inputs_bytes = sum(t.numel() * t.element_size() for t in [x, out, *(kw[f"{r}_table"] for r in "qkv")])
    per_pair = x.shape[0] * n * n * D * 4
    assert float_bytes <= inputs_bytes + x.shape[0] * HEADS * n * 4, (float_bytes, inputs_bytes)
    assert float_bytes < per_pair


def test_empty_batch():
    x, kw = inputs("1d", 5, "kv", batch=0)
    x, kw = differentiable(x, kw)
    out = translution_attention(x, **kw)
    assert out.shape == (0, 5, D)
    out.sum().backward()
    assert kw["k_table"].grad.abs().sum() == 0


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x, kw = inputs("causal", 7, "qkv", dtype=torch.float32)
    x1, kw1 = differentiable(x, kw)
    f = torch.compile(lambda x, kw: translution_attention(x, **kw), fullgraph=True, backend="aot_eager")
    out = f(x1, kw1)
    out.sum().backward()
    x2, kw2 = differentiable(x, kw)
    translution_attention(x2, **kw2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("change,match", [
    (lambda kw: kw.pop("k"), "role k needs k \\(shared\\) or k_table with its source \\(relative\\), got neither"),
    (lambda kw: kw.update(q_table=kw["q_table"][:, :, :4]), r"q and k must have the same width per head "
                                                            r"\(shared \+ relative\), got 2 and 4"),
    (lambda kw: kw.update(v=kw["v"][:, :3]), r"v must have shape \(B, N, H\*d\) with \(B, N\) == \(2, 5\)"),
    (lambda kw: kw.update(query_index=kw["query_index"] + 100), r"query_index values must lie in \[0, R\) with R = "
                                                               r"q_table.size\(0\) == 9"),
    (lambda kw: kw.update(query_index=kw["query_index"][:3]), r"query_index must have shape \(N, N\)"),
    (lambda kw: kw.update(heads=3), r"q_table must have shape \(R, C, H\*d\) with R > 0, C == q_source.size\(2\) "
                                    r"== 6 and H\*d a multiple of heads == 3, got \(9, 6, 8\)"),
    (lambda kw: kw.update(q_table=kw["q_table"].float()), "q_table must have the same dtype as the other inputs"),
])
def test_bad_inputs_name_the_argument(change, match):
    x, kw = inputs("1d", 5, "q")
    change(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        translution_attention(x, **kw)


def test_build_info_lists_the_fused_devices():
    info = translution_ext.build_info()
    assert "cpu" in info["fused_device_types"]
    assert ("cuda" in info["fused_device_types"]) == bool(info["cuda"])  # registered in CUDA builds only


@pytest.mark.parametrize("layout,size", [("causal", 9), ("2d_cls", (2, 3))])
def test_mixed_roles_with_their_own_sources(layout, size):
    # The α-Translution form: per head [shared | relative], each relative part from its own source.
    g = torch.Generator().manual_seed(3)
    ix = maps(layout, size)
    n, e = ix.key.shape[0], 3
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    kw = dict(q=r(2, n, HEADS * 4), k=r(2, n, HEADS * 1), v=r(2, n, HEADS * 4),
              q_source=r(2, n, 5), q_table=r(ix.num_classes, 5, HEADS * e) * 0.4,
              k_source=r(2, n, 7), k_table=r(ix.num_classes, 7, HEADS * (4 + e - 1)) * 0.4,
              v_source=r(2, n, 5), v_table=r(ix.num_classes, 5, HEADS * e) * 0.4)
    common = dict(key_index=ix.key, query_index=ix.query, heads=HEADS, causal=layout == "causal", scale=0.3)
    a = {k: v.clone().requires_grad_() for k, v in kw.items()}
    b = {k: v.clone().requires_grad_() for k, v in kw.items()}
    out = translution_attention(**a, **common)
    assert out.shape == (2, n, HEADS * (4 + e))
    parts = [(b[role], b[f"{role}_source"], b[f"{role}_table"]) for role in "qkv"]
    ref = translution_attention_reference(parts, ix.key, ix.query, HEADS, 0.3, layout == "causal")
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    for name in kw:
        torch.testing.assert_close(a[name].grad, b[name].grad, atol=1e-12, rtol=1e-10, msg=name)


def test_table_without_source_or_x():
    x, kw = inputs("1d", 5, "k")
    with pytest.raises(ValueError, match="k_table needs k_source or x"):
        translution_attention(**kw)


@requires_emulator
def test_auto_on_cuda_takes_fused_unless_the_heads_overflow_shared_memory(monkeypatch):
    """The CUDA kernels are deterministic (one writer per element), so deterministic mode keeps them;
    "auto" takes the projection kernels when the head widths need more shared memory per block
    than the device has (the kernels' own sizes, from the emulation build of the CUDA sources)."""
    from types import SimpleNamespace

    from translution_ext import _native
    from translution_ext.nn.functional import backend_unavailable_reason, resolve_backend

    monkeypatch.setattr(_native, "FUSED_DEVICE_TYPES", frozenset({"cpu", "cuda"}))
    monkeypatch.setattr(_native, "NATIVE_DEVICE_TYPES", frozenset({"cpu", "cuda"}))
    monkeypatch.setattr(_native, "CUDA_ARCH_REASON", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(shared_memory_per_block_optin=227 * 1024))  # H100
    monkeypatch.setattr(torch.ops.translution_ext, "translution_attention_shared_memory",
                        torch.ops.translution_ext_emu.translution_attention_shared_memory, raising=False)
    cuda = torch.device("cuda")
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert resolve_backend("auto", cuda, widths=(torch.bfloat16, 64, 64)) == "fused"
    finally:
        torch.use_deterministic_algorithms(previous)
    assert resolve_backend("auto", cuda, widths=(torch.float32, 128, 128)) == "fused"
    reason = backend_unavailable_reason("fused", cuda, False, (torch.float32, 2048, 2048))
    assert re.search(r"need \d+ bytes of shared memory per block for head widths 2048 \(q, k\) and 2048 \(v\) in "
                     r"torch.float32, over this device's 232448", reason), reason
    assert resolve_backend("auto", cuda, widths=(torch.float32, 2048, 2048)) == "native"
    assert resolve_backend("auto", torch.device("cpu"), widths=(torch.float32, 2048, 2048)) == "fused"


@pytest.mark.parametrize("device", DEVICES)
def test_pair_groups_are_built_once_per_index_map_version(device):
    """The index maps are read on the host once (cached): a change that bypasses the version
    counter (.data) goes unseen, an in-place change is planned and validated again."""
    x, kw = inputs("2d_cls", (2, 3), "kv", device=device)
    kw["key_index"] = kw["key_index"].clone()
    first = translution_attention(x, **kw)
    kw["key_index"].data[1, 1] = kw["k_table"].shape[0] + 5
    torch.testing.assert_close(translution_attention(x, **kw), first)
    kw["key_index"][1, 1] = kw["k_table"].shape[0] + 5
    with pytest.raises(ValueError, match="key_index"):
        translution_attention(x, **kw)


# ---- The op against the spec written as loops (tests/spec_reference.py), with the spec's index maps.
# Role codes per q, k, v: "r" relative only (Translution), "s" shared only, "b" both (α-Translution:
# per head [shared | relative], the relative part from its own source).
ROLE_CODES = ["rrr", "rrs", "rsr", "srr", "rss", "srs", "ssr", "bbb", "bsb", "sbs", "brr", "rbs"]
SPEC_LAYOUTS = [("1d", 6, None), ("1d", 7, 4), ("causal", 7, None), ("2d", (2, 3), None), ("2d", (3, 3), (2, 3)),
                ("2d_cls", (2, 2), None)]


def spec_inputs(layout, size, actual, codes, *, heads=2, c=5, d=4, dtype=torch.float64, seed=0, batch=2):
    """Op keyword arguments with the spec's index maps; per head q and k are d wide ("b": 1 shared + d − 1
    relative), v is d + 1 wide ("b": 2 shared + d − 1 relative)."""
    import translution_reference as maps

    g = torch.Generator().manual_seed(seed)
    rows, key_index, query_index = maps.spec_rows(layout, size, actual)
    n = key_index.shape[0]
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    kw = dict(key_index=key_index, query_index=query_index, heads=heads, causal=layout == "causal")
    for role, code in zip("qkv", codes):
        width = d + (role == "v")
        shared_w = {"s": width, "r": 0, "b": 1 + (role == "v")}[code]
        if shared_w:
            kw[role] = r(batch, n, heads * shared_w)
        if code != "s":
            kw[f"{role}_source"] = r(batch, n, c)
            kw[f"{role}_table"] = r(rows, c, heads * (width - shared_w)) * c ** -0.5
    return kw


def _leaves(kw, device="cpu"):
    return {k: (v.detach().clone().to(device).requires_grad_() if torch.is_tensor(v) and v.is_floating_point()
                else v.to(device) if torch.is_tensor(v) else v) for k, v in kw.items()}


def assert_op_matches_spec(kw, device, atol=1e-11, rtol=1e-9, scale=None):
    """Output and every input gradient of the op (on ``device``) against the spec loops (float64, CPU)."""
    import spec_reference as spec

    ours, ref = _leaves(kw, device), _leaves(kw)
    out = translution_attention(**ours, scale=scale)
    expected = spec.translution_attention(**ref, scale=scale)
    torch.testing.assert_close(out.cpu(), expected, atol=atol, rtol=rtol)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1), dtype=expected.dtype)
    out.backward(grad.to(out))
    expected.backward(grad)
    for name, value in ours.items():
        if torch.is_tensor(value) and value.requires_grad:
            torch.testing.assert_close(value.grad.cpu(), ref[name].grad, atol=atol, rtol=rtol, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("codes", ROLE_CODES)
@pytest.mark.parametrize("layout,size,actual", SPEC_LAYOUTS)
def test_matches_the_spec_loops(layout, size, actual, codes, device):
    assert_op_matches_spec(spec_inputs(layout, size, actual, codes), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [0.37, 1.3])
def test_explicit_scale_matches_the_spec_loops(scale, device):
    assert_op_matches_spec(spec_inputs("2d_cls", (2, 2), None, "bbb"), device, scale=scale)


# Widths one below and above the GEMM tiles of the kernels (kBK = 32 reduction slices, kBM = kBN = 64
# tiles in csrc/cuda/block_gemm.cuh), and token counts past one block of query rows (16 to 128 rows).
TILE_SHAPES = [  # (layout, size, heads, C, d)
    ("1d", 33, 1, 31, 33),
    ("causal", 34, 1, 33, 63),
    ("1d", 17, 2, 65, 32),
    ("2d_cls", (4, 4), 1, 64, 65),
    ("1d", 9, 1, 97, 66),
    ("1d", 63, 1, 8, 8),  # token counts one below and above 64-row and 64-key tiles
    ("2d", (5, 13), 2, 5, 4),
    ("causal", 130, 2, 3, 2),  # more than one 128-row block whatever the thread count
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("codes", ["rrr", "bsb"])
@pytest.mark.parametrize("layout,size,heads,c,d", TILE_SHAPES)
def test_shapes_across_the_tile_edges_match_the_spec_loops(layout, size, heads, c, d, codes, device):
    kw = spec_inputs(layout, size, None, codes, heads=heads, c=c, d=d, batch=1)
    assert_op_matches_spec(kw, device, atol=1e-10, rtol=1e-8)
