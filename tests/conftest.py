"""Shared test helpers: devices, dtypes, tolerances."""
from __future__ import annotations

import contextlib
import os
import warnings
import zlib

import pytest
import torch

import translution_ext

# The CUDA emulation build (bash scripts/test_cuda_emulated.sh): the CUDA kernel sources compiled
# for the CPU, as ops torch.ops.translution_ext_emu.* with the schemas of torch.ops.translution_ext.*.
EMULATOR_LIBRARY = os.environ.get("CUDA_EMULATOR_LIBRARY", "")
if EMULATOR_LIBRARY:
    torch.ops.load_library(EMULATOR_LIBRARY)
CUDA_OPS = ("relative_offset_projection", "relative_offset_projection_grad_x", "relative_offset_projection_grad_weight",
            "translution_attention", "translution_attention_backward", "acmix_window_attention",
            "acmix_window_attention_backward", "pixel_shift_products", "pixel_shift_products_backward",
            "xvolution_deployed")


class EmulatedCuda(str):
    """The device "cpu" of a test parameter that runs the emulated CUDA kernels instead of the CPU kernels."""


EMU = EmulatedCuda("cpu")
requires_emulator = pytest.mark.skipif(
    not EMULATOR_LIBRARY, reason="emulated CUDA kernels not built (bash scripts/test_cuda_emulated.sh runs these)")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
           pytest.param(EMU, id="emu", marks=requires_emulator)]


@contextlib.contextmanager
def emulated_cuda_kernels():
    """Within the block, the CPU kernels of the package's CUDA ops are the emulated CUDA kernels,
    so the public API (checks, autograd, fake kernels) runs unchanged on top of them."""
    lib = torch.library.Library("translution_ext", "IMPL")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")
        for name in CUDA_OPS:
            emulated = getattr(torch.ops.translution_ext_emu, name).default
            lib.impl(name, (lambda op: lambda *args: op(*args))(emulated), "CPU")
    try:
        yield
    finally:
        lib._destroy()


@pytest.fixture(autouse=True)
def _run_emulated_cuda_kernels(request):
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or not any(isinstance(v, EmulatedCuda) for v in callspec.params.values()):
        yield
        return
    with emulated_cuda_kernels():
        yield
FLOAT_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


# The only reasons a test may be skipped in CI (CI=true): anything else is a hidden failure.
EXPLAINED_SKIPS = ("no CUDA device", "emulated CUDA kernels not built", "the sanitizer would abort this process")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI", "").lower() != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    problems = []
    for report in reporter.stats.get("skipped", []):
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not any(explained in reason for explained in EXPLAINED_SKIPS):
            problems.append(f"{report.nodeid}: {reason}")
    passed = len(reporter.stats.get("passed", []))
    minimum = int(os.environ.get("TRANSLUTION_EXT_MIN_TESTS", "0"))
    if passed < minimum:
        problems.append(f"only {passed} tests passed, expected at least TRANSLUTION_EXT_MIN_TESTS = {minimum}")
    if problems:
        reporter.write_line("CI check failed:\n  " + "\n  ".join(problems), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """TRANSLUTION_EXT_SHARD=i/n keeps the selected tests (after -k) whose id hashes to i of n, so
    that a single-threaded suite (the emulated CUDA kernels) can run as n processes side by side.
    By hash, not every n-th: neighbouring parametrisations (small and large shapes) would
    otherwise all land in the same process."""
    shard = os.environ.get("TRANSLUTION_EXT_SHARD", "")
    if not shard:
        return
    try:
        index, count = (int(part) for part in shard.split("/"))
    except ValueError:
        index = count = -1
    if not 0 <= index < count:
        raise pytest.UsageError(f"TRANSLUTION_EXT_SHARD must be i/n with 0 <= i < n, got {shard!r}")
    mine = [zlib.crc32(item.nodeid.encode()) % count == index for item in items]
    config.hook.pytest_deselected(items=[item for item, keep in zip(items, mine) if not keep])
    items[:] = [item for item, keep in zip(items, mine) if keep]


def pytest_sessionstart(session):
    # CI sets this so that a build that silently fell back to the reference fails loudly.
    if os.environ.get("TRANSLUTION_EXT_REQUIRE_NATIVE", "0") == "1" and not translution_ext.has_native():
        raise pytest.UsageError(
            f"TRANSLUTION_EXT_REQUIRE_NATIVE=1 but the native library is not loaded: "
            f"{translution_ext.build_info()['load_error']}"
        )


requires_native = pytest.mark.skipif(not translution_ext.has_native(), reason="native library not loaded")


def assert_close_to_reference(actual: torch.Tensor, exact: torch.Tensor, same_dtype_ref: torch.Tensor) -> None:
    """Checks ``actual`` against ``exact`` (float64) with a per-dtype rule.

    float64/float32: fixed relative tolerances.  float16/bfloat16: the error
    must be at most 2x the error of the reference computed in that same dtype
    (plus a small floor), as flash-attention judges its kernels.
    """
    scale = exact.abs().max().item() if exact.numel() else 1.0
    scale = max(scale, 1e-6)
    err = (actual.double() - exact).abs().max().item() if exact.numel() else 0.0
    if actual.dtype == torch.float64:
        assert err <= 1e-10 * scale, f"float64 error {err:.3g} (scale {scale:.3g})"
    elif actual.dtype == torch.float32:
        assert err <= 2e-5 * scale, f"float32 error {err:.3g} (scale {scale:.3g})"
    else:
        ref_err = (same_dtype_ref.double() - exact).abs().max().item() if exact.numel() else 0.0
        eps = torch.finfo(actual.dtype).eps
        bound = 2 * ref_err + eps * scale
        assert err <= bound, f"{actual.dtype} error {err:.3g} > 2 x reference error {ref_err:.3g} + eps"
