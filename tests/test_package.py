"""Package-level behaviour: native library status, fallback when it is missing."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import translution_ext
from conftest import requires_native

PROBE = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch, translution_ext
    from translution_ext import indexing
    ix = indexing.offset_index_1d(4)
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(ix.num_classes, 3, 5, dtype=torch.float64)
    out = translution_ext.relative_offset_projection(x, w, ix.key)
    out.sum().backward()
ours = [str(w.message) for w in caught if "translution_ext" in str(w.message)]
print(json.dumps({"native": translution_ext.has_native(), "info": translution_ext.build_info(),
                  "warnings": ours, "shape": list(out.shape)}))
"""


def run_probe(env_extra=None, cwd=None, pythonpath=None):
    env = dict(os.environ, **(env_extra or {}))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=cwd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


BUILD_INFO_TYPES = {"native": bool, "load_error": (str, type(None)), "library": (str, type(None)), "torch_runtime": str,
                    "cuda_available": bool, "native_device_types": list, "fused_device_types": list}
NATIVE_BUILD_INFO_TYPES = {"torch_version": str, "cpu": bool, "cuda": bool, "cuda_version": (str, type(None)),
                           "cuda_archs": str, "cpu_parallel": bool}


def test_build_info_is_json_with_the_documented_keys_and_types():
    info = json.loads(json.dumps(translution_ext.build_info()))  # plain JSON, as `info` prints it
    expected = {**BUILD_INFO_TYPES, **(NATIVE_BUILD_INFO_TYPES if info["native"] else {})}
    assert set(info) == set(expected)
    for key, kind in expected.items():
        assert isinstance(info[key], kind), (key, info[key])
    assert (info["load_error"] is None) == info["native"] and (info["library"] is not None) == info["native"]


@requires_native
def test_cpu_kernels_are_built_with_torch_s_thread_pool():
    # at::parallel_for is an inline OpenMP region: a library compiled without OpenMP runs every CPU kernel
    # on one thread whatever torch.set_num_threads says (it did, until the build passed -fopenmp).
    if not sys.platform.startswith("linux") or "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("the OpenMP build flag is set on Linux, where torch's thread pool is OpenMP")
    assert translution_ext.build_info()["cpu_parallel"] is True


def test_build_info_device_types_are_the_registered_kernels():
    # What build_info claims against the dispatcher: a device type is listed exactly when the op has a
    # kernel registered for its dispatch key, and the library was built against this torch release.
    info = translution_ext.build_info()
    if not info["native"]:
        assert info["native_device_types"] == [] and info["fused_device_types"] == []
        return
    assert os.path.isfile(info["library"])
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    for key, op in (("native_device_types", "relative_offset_projection"),
                    ("fused_device_types", "translution_attention")):
        registered = [d for d, k in (("cpu", "CPU"), ("cuda", "CUDA"))
                      if torch._C._dispatch_has_kernel_for_dispatch_key(f"translution_ext::{op}", k)]
        assert sorted(info[key]) == registered, (key, registered)
    assert info["cuda"] == ("cuda" in info["native_device_types"])
    assert bool(info["cuda_archs"]) == info["cuda"]


def test_disabled_native_falls_back_with_one_warning():
    result = run_probe({"TRANSLUTION_EXT_DISABLE_NATIVE": "1"})
    assert result["native"] is False
    assert result["shape"] == [2, 4, 4, 5]
    assert len(result["warnings"]) == 1
    assert "TRANSLUTION_EXT_DISABLE_NATIVE=1" in result["warnings"][0]
    assert result["info"]["load_error"]


def test_missing_library_falls_back_with_one_warning(tmp_path):
    # A copy of the Python package without the compiled library.
    src = os.path.dirname(translution_ext.__file__)
    shutil.copytree(src, tmp_path / "translution_ext", ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    result = run_probe({"TRANSLUTION_EXT_DISABLE_NATIVE": "0"}, cwd=tmp_path, pythonpath=str(tmp_path))
    assert result["native"] is False
    assert len(result["warnings"]) == 1
    assert "no compiled library" in result["warnings"][0]
    assert result["shape"] == [2, 4, 4, 5]


def test_source_tree_shadowing_an_installed_copy_says_so(tmp_path):
    # The checkout's source folder (no library) sits in the current directory, which Python
    # searches first; an installed copy with the library is further down sys.path.
    src = os.path.dirname(translution_ext.__file__)
    shutil.copytree(src, tmp_path / "checkout" / "translution_ext", ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    installed = tmp_path / "site" / "translution_ext"
    installed.mkdir(parents=True)
    (installed / "_C.abi3.so").write_bytes(b"")  # only its presence is checked: the copy is never imported
    result = run_probe({"TRANSLUTION_EXT_DISABLE_NATIVE": "0"}, cwd=tmp_path / "checkout",
                       pythonpath=str(tmp_path / "site"))
    assert result["native"] is False and len(result["warnings"]) == 1
    warning = result["warnings"][0]
    assert "shadows the installed translution_ext in " + str(installed) in warning
    assert "run from another directory" in warning and "pip install" not in warning


def test_info_command_reports_backends():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "translution_ext", "info", "--device", "cpu"], capture_output=True,
                         text=True, check=True).stdout
    assert "native kernels by op:" in out and "relative_offset_projection" in out
    assert "Translution / AlphaTranslution backends on cpu" in out and "reference  can run" in out
    cuda = subprocess.run([sys.executable, "-m", "translution_ext", "info", "--device", "cuda"], capture_output=True,
                          text=True, check=True).stdout
    # Either outcome passes only where it is the right one: fused runs on a GPU the CUDA build supports.
    from translution_ext import _native

    runs = (torch.cuda.is_available() and "cuda" in translution_ext.build_info()["fused_device_types"]
            and _native.CUDA_ARCH_REASON is None)
    assert ("fused      can run" if runs else "fused      cannot run: ") in cuda
    dropout = subprocess.run([sys.executable, "-m", "translution_ext", "info", "--device", "cpu", "--dropout", "0.1"],
                             capture_output=True, text=True, check=True).stdout
    assert "training with attention dropout 0.1" in dropout
    assert "fused      cannot run: the fused kernels do not apply attention dropout (0.1 while training)" in dropout


def test_info_gives_every_reason_a_backend_cannot_run(monkeypatch):
    from translution_ext import __main__ as cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lines = cli.info("cuda", dropout=0.1).splitlines()
    backends = {line.split()[0]: line.split(None, 1)[1] for line in lines if line.startswith("  ") and
                line.split()[0] in ("fused", "native", "reference")}
    assert backends["reference"] == "cannot run: no CUDA device here"
    assert backends["native"].startswith("cannot run: no CUDA device here")
    assert backends["fused"].startswith("cannot run: no CUDA device here")
    assert backends["fused"].endswith("the fused kernels do not apply attention dropout (0.1 while training)")


def test_cuda_kernels_for_older_architectures_are_not_used_on_a_newer_gpu():
    from translution_ext._native import cuda_arch_unsupported_reason as reason

    archs = "8.0;9.0+PTX"
    assert reason((8, 0), archs) is None and reason((8, 6), archs) is None and reason((8, 9), archs) is None
    assert reason((9, 0), archs) is None and reason((10, 0), archs) is None and reason((12, 0), archs) is None
    for old in ((7, 5), (7, 0), (6, 1)):  # a T4, a V100, a P100: no device code they can run
        message = reason(old, archs)
        assert f"compute capability {old[0]}.{old[1]}" in message and "TORCH_CUDA_ARCH_LIST" in message
    assert reason((10, 0), "8.0;9.0") is not None  # no PTX: a newer major cannot run sm_90 code
    assert reason((9, 0), "8.0 9.0") is None  # torch's space-separated form
