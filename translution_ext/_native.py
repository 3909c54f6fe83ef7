"""Loading of the compiled library ``translution_ext/_C``.

The package must import without it: when the library is missing or fails to
load, one warning says why and the pure-PyTorch reference serves instead.
Set ``TRANSLUTION_EXT_DISABLE_NATIVE=1`` to force the reference path.
"""
from __future__ import annotations

import importlib.machinery
import importlib.metadata
import json
import os
import sys
import warnings
from typing import Any, List, Optional, Tuple

import torch

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _library_path(package_dir: str = _PACKAGE_DIR) -> Optional[str]:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(package_dir, "_C" + suffix)
        if os.path.exists(path):
            return path
    return None


def _other_copies_with_library() -> List[str]:
    """Folders of other translution_ext copies that hold a compiled library: on sys.path
    behind this one, or where pip installed the distribution."""
    folders = [os.path.join(os.path.abspath(entry or os.curdir), "translution_ext") for entry in sys.path]
    try:
        dist = importlib.metadata.distribution("translution_ext")
        folders += [os.path.dirname(os.path.abspath(str(dist.locate_file(f)))) for f in dist.files or ()
                    if f.name.startswith("_C") and f.parent.name == "translution_ext"]
    except importlib.metadata.PackageNotFoundError:
        pass
    own = os.path.realpath(_PACKAGE_DIR)
    found: List[str] = []
    for folder in folders:
        if os.path.realpath(folder) != own and folder not in found and _library_path(folder):
            found.append(folder)
    return found


def _missing_library_reason() -> str:
    """Why there is no library here, and what to do: a source folder that shadows an installed
    copy (Python puts the current directory first on sys.path) needs a change of directory."""
    reason = f"no compiled library translution_ext/_C in {_PACKAGE_DIR}"
    others = _other_copies_with_library()
    if others:
        return (f"{reason}: this copy (a source tree in the current directory or on PYTHONPATH) shadows the "
                f"installed translution_ext in {others[0]}, which has it; run from another directory (Python "
                "imports the current directory's translution_ext first) or take this folder off PYTHONPATH")
    return (f"{reason} (build it in place with `python setup.py build_ext --inplace`, or install it with "
            "`pip install .` and run from outside the source tree)")


def _load() -> Optional[str]:
    """Loads the library; returns None on success, else the reason it is unavailable."""
    if os.environ.get("TRANSLUTION_EXT_DISABLE_NATIVE", "0") == "1":
        return "disabled by TRANSLUTION_EXT_DISABLE_NATIVE=1"
    path = _library_path()
    if path is None:
        return _missing_library_reason()
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


def cuda_arch_unsupported_reason(capability: Tuple[int, int], archs: str) -> Optional[str]:
    """None when kernels compiled for ``archs`` (e.g. "8.0;9.0+PTX") run on a GPU of compute capability
    ``capability``, else the reason.  Device code for X.Y runs on X.Z with Z >= Y; PTX for X.Y is
    compiled by the driver for any newer GPU."""
    for arch in filter(None, (a.strip() for a in archs.replace(" ", ";").split(";"))):
        ptx = arch.endswith("+PTX")
        major, minor = (int(v) for v in arch.removesuffix("+PTX").split(".")[:2])
        if (capability[0] == major and capability[1] >= minor) or (ptx and tuple(capability) >= (major, minor)):
            return None
    return (f"the CUDA kernels were compiled for the architectures {archs!r}, which cannot run on this GPU "
            f"(compute capability {capability[0]}.{capability[1]}); rebuild with TORCH_CUDA_ARCH_LIST including "
            f"\"{capability[0]}.{capability[1]}\" (README, Installing)")


def _cuda_arch_reason() -> Optional[str]:
    """Why the compiled CUDA kernels cannot run on a visible GPU, or None."""
    if LOAD_ERROR is not None or not torch.cuda.is_available():
        return None
    archs = json.loads(torch.ops.translution_ext.build_info()).get("cuda_archs") or ""
    if not archs:
        return None
    for device in range(torch.cuda.device_count()):
        reason = cuda_arch_unsupported_reason(torch.cuda.get_device_capability(device), archs)
        if reason is not None:
            return reason
    return None


CUDA_ARCH_REASON: Optional[str] = _cuda_arch_reason()
if CUDA_ARCH_REASON is not None:
    warnings.warn(f"translution_ext: CUDA inputs use the pure-PyTorch reference: {CUDA_ARCH_REASON}",
                  RuntimeWarning, stacklevel=2)


def _device_types(*ops: str) -> frozenset[str]:
    """Device types for which the library registers a kernel of every op in ``ops`` that can run here
    (CUDA kernels compiled for older architectures than the GPU's are left out)."""
    if LOAD_ERROR is None:
        return frozenset(
            device for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
            if all(torch._C._dispatch_has_kernel_for_dispatch_key(f"translution_ext::{op}", key) for op in ops)
            and not (device == "cuda" and CUDA_ARCH_REASON is not None)
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

    Keys: ``native`` (library loaded), ``load_error`` (why not, or None), ``library`` (its path),
    ``torch_runtime`` and, when loaded, ``torch_version`` (built against),
    ``cpu``, ``cuda`` (CUDA kernels compiled), ``cuda_version``, ``cuda_archs`` and ``cpu_parallel``
    (the CPU kernels were compiled with OpenMP, so they run on torch's thread pool; on one thread if not).
    """
    info: dict[str, Any] = {
        "native": LOAD_ERROR is None,
        "load_error": LOAD_ERROR,
        "library": _library_path() if LOAD_ERROR is None else None,
        "torch_runtime": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "native_device_types": sorted(NATIVE_DEVICE_TYPES),
        "fused_device_types": sorted(FUSED_DEVICE_TYPES),
    }
    if LOAD_ERROR is None:
        info.update(json.loads(torch.ops.translution_ext.build_info()))
    return info
