"""Builds translution_ext and its native library translution_ext/_C.

The library is compiled against the torch found in the build environment;
`pip install .` arranges for that to be the torch of the target environment
(see build_backend/torch_matched_backend.py and README "Installing").

Environment variables:
  FORCE_CUDA=1            build the CUDA kernels even if no GPU is visible
  FORCE_CPU=1             skip the CUDA kernels even if CUDA is found
  TORCH_CUDA_ARCH_LIST    CUDA architectures, e.g. "8.0;9.0" (default "8.0;9.0+PTX")
  MAX_JOBS                parallel compile jobs (ninja)
  TRANSLUTION_EXT_SANITIZE=1  compile the C++ with AddressSanitizer + UBSan (development;
                          scripts/test_cpu_sanitized.sh)
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _build_cuda() -> bool:
    if _flag("FORCE_CPU"):
        return False
    if torch.version.cuda is None:
        if _flag("FORCE_CUDA"):
            raise RuntimeError(
                "FORCE_CUDA=1 needs a CUDA build of torch, but the torch in the build environment "
                f"({torch.__version__}) is a CPU-only build"
            )
        return False
    if CUDA_HOME is None:
        if _flag("FORCE_CUDA"):
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME")
        return False
    return True


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extension():
    with_cuda = _build_cuda()
    torch_version = torch.__version__
    defines = [("TRANSLUTION_EXT_TORCH_VERSION", f'"{torch_version}"')]
    cxx_flags = ["-O3", "-std=c++20"]
    # ATen's at::parallel_for is an inline `#pragma omp parallel`: compiled without OpenMP, every CPU
    # kernel of this library would run on one thread whatever torch.set_num_threads says.
    link_flags = []
    if sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    if _flag("TRANSLUTION_EXT_SANITIZE"):
        sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
        cxx_flags[0] = "-O1"
        cxx_flags += sanitize
        link_flags += sanitize
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    if not with_cuda:
        print(f"translution_ext: building CPU kernels only (torch {torch_version})")
        return CppExtension(
            "translution_ext._C", sources, define_macros=defines,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags, py_limited_api=True,
        )
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCH_LIST
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list  # read by torch when it builds nvcc flags
    print(
        f"translution_ext: building CPU and CUDA kernels (torch {torch_version}, CUDA "
        f"{torch.version.cuda}, CUDA_HOME={CUDA_HOME}, TORCH_CUDA_ARCH_LIST={arch_list}, "
        f"MAX_JOBS={os.environ.get('MAX_JOBS', 'default')})"
    )
    defines += [("TRANSLUTION_EXT_WITH_CUDA", None), ("TRANSLUTION_EXT_CUDA_ARCHS", f'"{arch_list}"')]
    return CUDAExtension(
        "translution_ext._C", sources + _sources("csrc/cuda/*.cu"), define_macros=defines,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++20", "-lineinfo"]},
        extra_link_args=link_flags, py_limited_api=True,
    )


def _torch_requirement() -> str:
    # The binary is tied to the torch it was compiled against (C++ ABI).
    base = torch.__version__.split("+")[0]
    return f"torch=={base}"


setup(
    packages=find_packages(include=["translution_ext", "translution_ext.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    install_requires=[_torch_requirement()],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
