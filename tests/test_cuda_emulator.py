"""The CUDA emulator itself: it reports broken kernels, and every CUDA kernel of the project gives
bitwise-equal results under several thread schedules (racecheck), with the launch counts and the
host-side behaviour a GPU would show.  Runs with the emulation build (bash scripts/test_cuda_emulated.sh)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from translution_ext import indexing
from translution_ext.ops.acmix_window_attention import acmix_window_attention_reference
from translution_ext.ops.pixel_shift_products import pixel_shift_products_reference, shift_offsets
from translution_ext.ops.relative_offset_projection import relative_offset_projection_gathered

from conftest import EMULATOR_LIBRARY, assert_close_to_reference, requires_emulator

pytestmark = requires_emulator
SCHEDULES = ("forward", "reverse", "random:7")


@pytest.fixture
def emu():
    return torch.ops.translution_ext_emu


def selftest(name: str) -> torch.Tensor:
    return torch.ops.cuda_emulator.selftest(name, torch.arange(64, dtype=torch.float32))


def under_schedules(fn):
    """fn() under each schedule; the results as lists of tensors."""
    results = []
    try:
        for schedule in SCHEDULES:
            torch.ops.cuda_emulator.set_schedule(schedule)
            out = fn()
            results.append([t.clone() for t in (out if isinstance(out, (tuple, list)) else [out]) if t is not None])
    finally:
        torch.ops.cuda_emulator.set_schedule("")
    return results


def racecheck(fn):
    """Fails unless fn() gives bitwise-equal, NaN-free results under every schedule."""
    results = under_schedules(fn)
    for schedule, result in zip(SCHEDULES, results):
        for t in result:
            assert not (t.is_floating_point() and t.isnan().any()), f"NaN under schedule {schedule}"
        for a, b in zip(results[0], result):
            assert torch.equal(a, b), f"schedule {schedule} changes the result (a race)"
    return results[0]


# ---- broken kernels that the emulator must report --------------------------------------------

def test_a_correct_kernel_passes_the_racecheck():
    out = racecheck(lambda: selftest("rotate"))[0]
    assert torch.equal(out, torch.arange(64, dtype=torch.float32).roll(-1))


def test_dynamic_shared_memory_past_48_kb_after_the_opt_in():
    out = racecheck(lambda: selftest("dynamic_rotate"))[0]
    assert torch.equal(out, torch.arange(64, dtype=torch.float32).roll(-1))


def test_unwritten_dynamic_shared_memory_reads_as_nan():
    assert selftest("dynamic_unwritten").isnan().all()


def test_a_missing_barrier_is_caught():
    with pytest.raises(AssertionError, match="NaN under schedule|changes the result"):
        racecheck(lambda: selftest("missing_barrier"))


@pytest.mark.parametrize("name,match", [
    ("early_return", r"early_return_kernel .* thread \(57, 0, 0\) returned while thread \(\d+, 0, 0\) "
                     r"waits at __syncthreads\(\) at .*selftest_kernels.cu:\d+"),
    ("divergent_barrier", r"divergent_barrier_kernel .*block \(0, 0, 0\): threads wait at different barriers"),
    ("misaligned_wmma", r"misaligned_wmma_kernel .*wmma::load_matrix_sync: the pointer must be 256-bit"),
    ("grid_too_large", r"copy_kernel launched at .*selftest_kernels.cu:\d+: grid \(1, 70000, 1\) exceeds the limits"),
    ("block_too_large", r"block \(2048, 1, 1\) exceeds 1024 threads"),
    ("empty_grid", r"zero-size grid \(0, 1, 1\)"),
    ("dynamic_without_opt_in", r"dynamic_unwritten_kernel .*65536 bytes of dynamic shared memory, over the 49152 "
                               r"bytes allowed \(over 48 KB needs cudaFuncSetAttribute"),
])
def test_broken_kernels_are_reported_with_kernel_block_and_line(name, match):
    with pytest.raises(RuntimeError, match=match):
        selftest(name)


def test_an_out_of_bounds_shared_read_is_reported_by_the_sanitizer_build():
    sanitized = os.environ.get("CUDA_EMULATOR_SANITIZED_LIBRARY", "")
    if torch.ops.cuda_emulator.sanitized():
        pytest.skip("the sanitizer would abort this process: run from the plain build's session")
    if not sanitized:
        pytest.skip("CUDA_EMULATOR_SANITIZED_LIBRARY not set (bash scripts/test_cuda_emulated.sh sets it)")
    gcc = lambda lib: subprocess.run(["gcc", f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    env = dict(os.environ, LD_PRELOAD=f"{gcc('libasan.so')} {gcc('libstdc++.so')}", ASAN_OPTIONS="detect_leaks=0")
    code = (f"import torch; torch.ops.load_library({sanitized!r}); "
            "torch.ops.cuda_emulator.selftest('shared_out_of_bounds', torch.zeros(64))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode != 0
    # UBSan's bounds check or ASan's red zone, whichever sees it first, names the file and line.
    assert re.search(r"selftest_kernels.cu:\d+:\d+: runtime error: index 64 out of bounds|"
                     r"AddressSanitizer: global-buffer-overflow", run.stderr), run.stderr[-2000:]
    assert "selftest_kernels.cu" in run.stderr


# ---- every CUDA kernel under several schedules ------------------------------------------------

def relproj_case(side, B, N, C, D, R=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = R or 2 * N - 1
    index = torch.randint(0, R, (N, N), generator=g)
    x = torch.randn(B, N, C, generator=g).to(dtype)
    w = torch.randn(R, C, D, generator=g).to(dtype)
    cot = torch.randn(B, N, N, D, generator=g).to(dtype)
    return x, w, index, cot


# Sizes one below and above the tiles (kBM = kBN = 64 rows/columns, kBK = 32 reduction slices).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("side,B,N,C,D", [("key", 2, 7, 33, 65), ("query", 3, 5, 65, 63), ("key", 1, 1, 1, 1),
                                          ("query", 5, 9, 31, 17)])
def test_relative_offset_projection_kernels_are_race_free(emu, dtype, side, B, N, C, D):
    x, w, index, cot = relproj_case(side, B, N, C, D, dtype=dtype)
    out, gx, gw = racecheck(lambda: (emu.relative_offset_projection(x, w, index, side),
                                     emu.relative_offset_projection_grad_x(cot, w, index, side),
                                     emu.relative_offset_projection_grad_weight(cot, x, index, side, w.shape[0])))
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    ref = relative_offset_projection_gathered(x64, w64, index, side)
    ref.backward(cot.double())
    cpu = torch.ops.translution_ext  # the same-dtype reference of the low-precision rule: the CPU kernels
    same = (cpu.relative_offset_projection(x, w, index, side), cpu.relative_offset_projection_grad_x(cot, w, index, side),
            cpu.relative_offset_projection_grad_weight(cot, x, index, side, w.shape[0]))
    for got, want, same_dtype in zip((out, gx, gw), (ref, x64.grad, w64.grad), same):
        assert_close_to_reference(got, want.detach(), same_dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("window,stride", [(3, 1), (5, 2), (7, 3), (1, 1)])
def test_acmix_kernels_are_race_free(emu, dtype, window, stride):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 6, 9, 8, generator=g).to(dtype) for _ in range(3))
    pe = torch.randn(3, 9, 8, generator=g).to(dtype)
    out, attn = emu.acmix_window_attention(q, k, v, pe, 2, window, stride, 3 ** -0.5)
    go = torch.randn(out.shape, generator=g).to(dtype)
    racecheck(lambda: (*emu.acmix_window_attention(q, k, v, pe, 2, window, stride, 3 ** -0.5),
                       *emu.acmix_window_attention_backward(go, q, k, v, pe, attn, 2, window, stride, 3 ** -0.5)))
    ref = acmix_window_attention_reference(q.double(), k.double(), v.double(), pe[None].double(), 2, window, stride)
    same, _ = torch.ops.translution_ext.acmix_window_attention(q, k, v, pe, 2, window, stride, 3 ** -0.5)
    assert_close_to_reference(out, ref, same)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("lengths", [(1,), (1, 2, 3)])
def test_pixel_shift_kernels_are_race_free(emu, dtype, lengths):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 5, generator=g).to(dtype)
    flat = [v for s in shift_offsets(lengths) for v in s]
    go = torch.randn(2, len(flat) // 2 * 3, 7, 5, generator=g).to(dtype)
    out, gx = racecheck(lambda: (emu.pixel_shift_products(x, flat), emu.pixel_shift_products_backward(go, x, flat)))
    x64 = x.double().requires_grad_()
    exact = pixel_shift_products_reference(x64, shift_offsets(lengths))
    exact.backward(go.double())
    assert_close_to_reference(out, exact.detach(), torch.ops.translution_ext.pixel_shift_products(x, flat))
    assert_close_to_reference(gx, x64.grad, torch.ops.translution_ext.pixel_shift_products_backward(go, x, flat))


def xvolution_deployed_case(lengths, ci, co, k, ka, dtype=torch.float32):
    """x, a folded W* (T(X) taps zero outside the centre Ka x Ka), b*, flat shifts and the one-conv result."""
    g = torch.Generator().manual_seed(0)
    shifts = shift_offsets(lengths)
    x = torch.randn(2, ci, 7, 6, generator=g, dtype=torch.float64)
    w = torch.randn(co, ci * (1 + len(shifts)), k, k, generator=g, dtype=torch.float64)
    keep = torch.zeros(k, k, dtype=torch.float64)
    keep[(k - ka) // 2:(k + ka) // 2, (k - ka) // 2:(k + ka) // 2] = 1
    w[:, ci:] *= keep
    b = torch.randn(co, generator=g, dtype=torch.float64)
    t = pixel_shift_products_reference(x, shifts)
    ref = torch.nn.functional.conv2d(torch.cat([x, t], 1), w, b, 2, k // 2)
    return x.to(dtype), w.to(dtype), b.to(dtype), [v for s in shifts for v in s], ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("lengths,ka", [((1,), 1), ((1, 2), 3)])
def test_xvolution_deployed_kernel_is_race_free(emu, dtype, lengths, ka):
    x, w, b, flat, ref = xvolution_deployed_case(lengths, 3, 70, 3, ka, dtype)  # Co = 70: two Co tiles
    (out,) = racecheck(lambda: emu.xvolution_deployed(x, w, b, flat, 2, ka))
    assert_close_to_reference(out, ref, torch.ops.translution_ext.xvolution_deployed(x, w, b, flat, 2, ka))


def attention_case(layout, roles, B, H, C, width, value_width, dtype, seed=0):
    """Arguments of translution_attention: roles[r] is "s" (shared), "r" (relative) or "b" (both, α-Translution:
    half of the width each), for q, k, v."""
    ix = {"2d_cls": lambda: indexing.offset_index_2d_cls((5, 5)), "2d": lambda: indexing.offset_index_2d((5, 4)),
          "causal": lambda: indexing.offset_index_causal_1d(19), "1d": lambda: indexing.offset_index_1d(17)}[layout]()
    n, R = ix.key.shape[0], ix.num_classes
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, C, generator=g)
    shared, sources, tables = [None] * 3, [None] * 3, [None] * 3
    for r, kind in enumerate(roles):
        w = value_width if r == 2 else width
        ds = {"s": w, "r": 0, "b": w // 2}[kind]
        if ds:
            shared[r] = torch.randn(B, n, H * ds, generator=g).to(dtype)
        if w - ds:
            sources[r] = x.to(dtype)
            tables[r] = (torch.randn(R, C, H * (w - ds), generator=g) * C ** -0.5).to(dtype)
    return [*shared, *sources, *tables], ix, layout == "causal"


def attention_forward_backward(op, tensors, ix, H, causal, grad_out=None):
    out, lse = op.translution_attention(*tensors, ix.key, ix.query, H, 0.4, causal)
    grad_out = torch.randn_like(out, dtype=torch.float32).to(out.dtype) if grad_out is None else grad_out
    grads = op.translution_attention_backward(grad_out, *tensors, ix.key, ix.query, out, lse, H, 0.4, causal)
    return out, lse, grad_out, grads


# Shapes crossing the kernels' tiles: C and widths past 64 columns / 32-deep slices, 5 batch items
# (two batch tiles of 4), N past one 16-row tile, 2d_cls groups whose class-token row (or column)
# has more pairs (25) than a chunk holds (16 with 4 batch items).
@pytest.mark.parametrize("layout,roles,B,H,C,width,value_width,dtype", [
    ("2d_cls", "rrr", 5, 2, 8, 4, 4, torch.float32),
    ("causal", "rrr", 3, 2, 8, 4, 6, torch.float64),
    ("2d", "bbb", 2, 1, 65, 66, 70, torch.float32),
    ("1d", "srs", 5, 3, 33, 8, 8, torch.bfloat16),
    ("2d_cls", "bsr", 6, 2, 16, 8, 8, torch.float16),
    ("causal", "rsb", 2, 2, 12, 6, 10, torch.float32),
])
def test_fused_attention_kernels_are_race_free_and_match_the_reference(emu, layout, roles, B, H, C, width,
                                                                       value_width, dtype):
    tensors, ix, causal = attention_case(layout, roles, B, H, C, width, value_width, dtype)
    grad_out = torch.randn(B, ix.key.shape[0], H * value_width).to(dtype)
    def run():
        out, lse, _, grads = attention_forward_backward(emu, tensors, ix, H, causal, grad_out)
        return (out, lse, *grads)

    out, lse, *grads = racecheck(run)
    wide = [None if t is None else t.double() for t in tensors]
    want, want_lse, _, want_grads = attention_forward_backward(torch.ops.translution_ext, wide, ix, H, causal,
                                                               grad_out.double())
    # The same-dtype reference for the low-precision rule: the CPU kernels on the same inputs.
    same, same_lse, _, same_grads = attention_forward_backward(torch.ops.translution_ext, tensors, ix, H, causal,
                                                               grad_out)
    assert_close_to_reference(out, want, same)
    assert_close_to_reference(lse, want_lse, same_lse)  # fp32 for fp16/bf16 inputs: the fp32 rule
    for got, ref, same_dtype in zip(grads, want_grads, same_grads):
        assert_close_to_reference(got, ref, same_dtype)


# ---- launches, and host code as a GPU would run it --------------------------------------------

def launches(fn) -> int:
    before = torch.ops.cuda_emulator.launch_count()
    fn()
    return torch.ops.cuda_emulator.launch_count() - before


def fused_attention_launches(emu, ix, dtype, causal):
    """(forward, backward) launches of one call, the pair plan already cached."""
    n, R, H = ix.key.shape[0], ix.num_classes, 3
    x = torch.randn(1, n, 4).to(dtype)
    tables = [(torch.randn(R, 4, H * 2) * 0.5).to(dtype) for _ in range(3)]
    args = (None, None, None, x, x, x, *tables, ix.key, ix.query, H, 0.5, causal)
    emu.translution_attention(*args)  # builds and caches the pair plan
    result = {}
    forward = launches(lambda: result.update(fwd=emu.translution_attention(*args)))
    out, lse = result["fwd"]
    backward = launches(lambda: emu.translution_attention_backward(torch.ones_like(out), *args[:9], ix.key, ix.query,
                                                                      out, lse, H, 0.5, causal))
    return forward, backward


@pytest.mark.parametrize("geometry", ["vit_tiny", "causal_256"])
def test_fused_attention_launch_counts(emu, geometry):
    """One forward launch and three backward launches, whatever N and the number of offset classes:
    ViT-tiny's 14x14 grid + class token (732 classes) and causal N = 256."""
    ix = indexing.offset_index_2d_cls((14, 14)) if geometry == "vit_tiny" else indexing.offset_index_causal_1d(256)
    assert fused_attention_launches(emu, ix, torch.float32, geometry == "causal_256") == (1, 3)


def test_fused_attention_refuses_heads_too_wide_for_shared_memory(emu):
    """Before any launch: a clear error naming the need and the device's limit."""
    ix = indexing.offset_index_1d(2)
    q = torch.randn(1, 2, 2048)
    v_source, v_table = torch.randn(1, 2, 1), torch.randn(ix.num_classes, 1, 2048)
    before = torch.ops.cuda_emulator.launch_count()
    with pytest.raises(ValueError, match=r"needs \d+ bytes of shared memory per block for these head widths, over "
                                         r"the device's 232448"):
        emu.translution_attention(q, q, None, None, None, v_source, None, None, v_table, ix.key, ix.query, 1, 1.0,
                                  False)
    assert torch.ops.cuda_emulator.launch_count() == before
    with pytest.raises(ValueError, match=r"widths must be >= 0, got -1 and 64"):
        emu.translution_attention_shared_memory(torch.float32, -1, 64)


def test_fused_attention_launch_counts_in_bfloat16(emu):
    """fp16/bf16 accumulate gradients in fp32: one more backward launch casts them."""
    assert fused_attention_launches(emu, indexing.offset_index_2d_cls((3, 3)), torch.bfloat16, False) == (1, 4)


def test_launch_counts(emu):
    x, w, index, cot = relproj_case("key", 2, 5, 8, 8)
    assert launches(lambda: emu.relative_offset_projection(x, w, index, "key")) == 1
    assert launches(lambda: emu.relative_offset_projection_grad_x(cot, w, index, "key")) == 1
    img = torch.randn(1, 2, 5, 5)
    flat = [v for s in shift_offsets(tuple(range(1, 10))) for v in s]  # 72 shifts: two chunks of <= 64
    assert launches(lambda: emu.pixel_shift_products(img, flat)) == 2
    w = torch.randn(3, 2 * 73, 3, 3)
    assert launches(lambda: emu.xvolution_deployed(img, w, None, flat, 1, 1)) == 2  # one per chunk of shifts


def test_xvolution_deployed_with_more_than_64_shifts(emu):
    x, w, b, flat, ref = xvolution_deployed_case(tuple(range(1, 10)), 2, 3, 3, 1, torch.float64)
    torch.testing.assert_close(emu.xvolution_deployed(x, w, b, flat, 2, 1), ref)


def test_more_than_64_shifts_match_the_reference(emu):
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    shifts = shift_offsets(tuple(range(1, 10)))
    flat = [v for s in shifts for v in s]
    torch.testing.assert_close(emu.pixel_shift_products(x, flat), pixel_shift_products_reference(x, shifts))
    xr = x.clone().requires_grad_()
    go = torch.randn(1, 2 * len(shifts), 9, 9, dtype=torch.float64)
    pixel_shift_products_reference(xr, shifts).backward(go)
    torch.testing.assert_close(emu.pixel_shift_products_backward(go, x, flat), xr.grad)


def test_acmix_with_no_channels_gives_uniform_weights(emu):
    q = torch.zeros(2, 0, 5, 4)
    out, attn = emu.acmix_window_attention(q, q, q, torch.zeros(0, 5, 4), 1, 3, 1, 1.0)
    assert out.shape == (2, 0, 5, 4)
    torch.testing.assert_close(attn, torch.full((2, 1, 9, 5, 4), 1 / 9))


@pytest.mark.parametrize("op,args,match", [
    ("relative_offset_projection", lambda m, c: (m(2, 3, 4), c(5, 4, 6), torch.zeros(3, 3, dtype=torch.long), "key"),
     r"weight must be on the same device as x \(meta\), got cpu"),
    ("pixel_shift_products_backward", lambda m, c: (c(1, 8, 3, 3), m(1, 1, 3, 3), [0, 1] * 8),
     r"grad_out must be on x's device \(meta\)"),
])
def test_mixed_devices_raise_the_documented_error_before_the_device_guard(op, args, match):
    """The device guard (which refuses a device that is not the GPU's) comes after the checks."""
    meta = lambda *s: torch.zeros(*s, device="meta")  # noqa: E731
    cpu = lambda *s: torch.zeros(*s)  # noqa: E731
    overload = getattr(torch.ops.translution_ext_emu, op).default
    with pytest.raises(ValueError, match=match):
        overload.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args(meta, cpu))


def test_grad_x_grid_past_65535_batch_groups(emu):
    """grad_x puts its batch groups in grid.x: a batch past 4 x 65535 rows still launches."""
    B = 4 * 65535 + 4
    x, w, index, cot = relproj_case("key", B, 1, 1, 1, R=1)
    gx = emu.relative_offset_projection_grad_x(cot, w, index, "key")
    torch.testing.assert_close(gx, cot[:, 0] * w[0, 0, 0])


def test_emulated_ops_have_the_schemas_of_the_package_ops():
    for name in ("relative_offset_projection", "relative_offset_projection_grad_x",
                 "relative_offset_projection_grad_weight", "translution_attention", "translution_attention_backward",
                 "acmix_window_attention", "acmix_window_attention_backward", "pixel_shift_products",
                 "pixel_shift_products_backward", "xvolution_deployed"):
        ours = getattr(torch.ops.translution_ext, name).default._schema
        emulated = getattr(torch.ops.translution_ext_emu, name).default._schema
        assert str(emulated).replace("translution_ext_emu::", "translution_ext::") == str(ours)
    assert EMULATOR_LIBRARY
