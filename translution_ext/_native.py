"""Loading of the compiled library ``translution_ext/_C``.

The package must import without it: when the library is missing or fails to
load, one warning says why and the pure-PyTorch reference serves instead.
Set ``TRANSLUTION_EXT_DISABLE_NATIVE=1`` to force the reference path.
"""
from __future__ import annotations

import importlib.machinery
import json
import os
import warnings
from typing import Any, Optional

import torch

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _library_path() -> Optional[str]:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(_PACKAGE_DIR, "_C" + suffix)
        if os.path.exists(path):
            return path
    return None


def _load() -> Optional[str]:
    """Loads the library; returns None on success, else the reason it is unavailable."""
    if os.environ.get("TRANSLUTION_EXT_DISABLE_NATIVE", "0") == "1":
        return "disabled by TRANSLUTION_EXT_DISABLE_NATIVE=1"
    path = _library_path()
    if path is None:
        return (
            f"no compiled library translution_ext/_C in {_PACKAGE_DIR} (build it with "
            "`pip install .` or `python setup.py build_ext --inplace`)"
        )
    try:
        torch.ops.load_library(path)
    except (OSError, RuntimeError) as err:
        return (
            f"{path} failed to load with torch {torch.__version__}: {err}. It was probably built "
            "against another torch; rebuild it in this environment (README, Installing)"
        )
    built_with = json.loads(torch.ops.translution_ext.build_info())["torch_version"]
    if built_with.split("+")[0] != torch.__version__.split("+")[0]:
        return (
            f"{path} was built against torch {built_with} but torch {torch.__version__} is "
            "installed; rebuild it in this environment (README, Installing)"
        )
    return None


LOAD_ERROR: Optional[str] = _load()
if LOAD_ERROR is not None:
    warnings.warn(
        "translution_ext: native kernels unavailable, using the pure-PyTorch reference "
        f"implementation: {LOAD_ERROR}",
        RuntimeWarning,
        stacklevel=2,
    )


def has_native() -> bool:
    """True when the compiled kernels are loaded."""
    return LOAD_ERROR is None


def _device_types(*ops: str) -> frozenset[str]:
    """Device types for which the library registers a kernel of every op in ``ops``."""
    if LOAD_ERROR is None:
        return frozenset(
            device for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
            if all(torch._C._dispatch_has_kernel_for_dispatch_key(f"translution_ext::{op}", key) for op in ops)
        )
    return frozenset()


# Computed once: constants that torch.compile can trace through.
NATIVE_DEVICE_TYPES: frozenset[str] = _device_types(
    "relative_offset_projection", "relative_offset_projection_grad_x", "relative_offset_projection_grad_weight")
FUSED_DEVICE_TYPES: frozenset[str] = _device_types("translution_attention", "translution_attention_backward")
PIXEL_SHIFT_DEVICE_TYPES: frozenset[str] = _device_types("pixel_shift_products", "pixel_shift_products_backward")
ACMIX_DEVICE_TYPES: frozenset[str] = _device_types("acmix_window_attention", "acmix_window_attention_backward")


def build_info() -> dict[str, Any]:
    """What was compiled and what runs here.

    Keys: ``native`` (library loaded), ``load_error`` (why not, or None),
    ``torch_runtime`` and, when loaded, ``torch_version`` (built against),
    ``cpu``, ``cuda`` (CUDA kernels compiled), ``cuda_version``, ``cuda_archs``.
    """
    info: dict[str, Any] = {
        "native": LOAD_ERROR is None,
        "load_error": LOAD_ERROR,
        "torch_runtime": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "native_device_types": sorted(NATIVE_DEVICE_TYPES),
        "fused_device_types": sorted(FUSED_DEVICE_TYPES),
    }
    if LOAD_ERROR is None:
        info.update(json.loads(torch.ops.translution_ext.build_info()))
    return info
