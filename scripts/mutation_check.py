"""Proves that the test suite catches wrong answers: applies one deliberate bug at a time to a copy of
the package (Python fallbacks, C++ CPU kernels, CUDA kernels on the emulator), runs the tests of that
code against the copy, and reports whether they failed (the mutant is killed) or passed (it survived).
Exit status 1 if any mutant survives, 2 if the unmutated copy already fails its tests or does not build.

    python scripts/mutation_check.py [--only SUBSTRING] [--kinds python,cpp,cuda] [--list]
    (uses the current Python's torch)

Needs the extension built in the checkout (python setup.py build_ext --inplace): the Python mutants run
against a copy of that library.  The C++ mutants build the extension once in the copy (MAX_JOBS, default
2) and then one translation unit per mutant; the CUDA mutants build the emulation library once
(tests/cuda_emulator, needs cmake and ninja) and then one kernel per mutant.  About 50 minutes on 2 busy
cores, most of it the first builds; --kinds python alone takes about 5.  scripts/mutation_check_cuda.py adds the CUDA barrier mutants.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIED = ("translution_ext", "csrc", "tests", "build_backend", "setup.py", "pyproject.toml", "CMakeLists.txt",
          "MANIFEST.in", "README.md")


@dataclass
class Mutant:
    """One bug: ``old`` (must occur exactly once in ``path``) becomes ``new``."""
    description: str
    kind: str  # "python" (the checkout's library), "cpp" (rebuilt extension) or "cuda" (rebuilt emulation library)
    path: str
    old: str
    new: str
    tests: List[str]
    select: str = ""  # pytest -k
    env: Dict[str, str] = field(default_factory=dict)


NO_NATIVE = {"TRANSLUTION_EXT_DISABLE_NATIVE": "1"}  # the op runs its Python fallback, as on a device without kernels

MUTANTS = [
    # ---- Python: fallbacks, index maps, blocks
    Mutant("T(X) fallback: shift sign flipped (X[p - δ] instead of X[p + δ])", "python",
           "translution_ext/ops/pixel_shift_products.py",
           "padded[..., m + dy: m + dy + h, m + dx: m + dx + w]", "padded[..., m - dy: m - dy + h, m - dx: m - dx + w]",
           ["tests/test_pixel_shift_products.py"], env=NO_NATIVE),
    Mutant("1D index maps: q and k maps swapped", "python", "translution_ext/indexing.py",
           "return RelativeIndex(key=key, query=key.t().contiguous(), num_classes=num_classes_1d(max_len))",
           "return RelativeIndex(key=key.t().contiguous(), query=key, num_classes=num_classes_1d(max_len))",
           ["tests/test_indexing.py", "tests/test_translution_modules.py"], "1d"),
    Mutant("2D cls index map: a table row dropped (cls_out reuses the cls_in row)", "python",
           "translution_ext/indexing.py", "key[1:, 0] = r - 1", "key[1:, 0] = r - 2",
           ["tests/test_indexing.py", "tests/test_translution_modules.py"], "2d_cls"),
    Mutant("Translution blocks: softmax scale 10% too large", "python", "translution_ext/nn/relative_block.py",
           "self.scale = dim_head ** -0.5", "self.scale = 1.1 * dim_head ** -0.5",
           ["tests/test_translution_modules.py"], "spec"),
    Mutant("α-Translution unfused scores: α and 1 − α swapped", "python", "translution_ext/nn/functional.py",
           "return (1 - alpha) * plain + alpha * relative", "return alpha * plain + (1 - alpha) * relative",
           ["tests/test_translution_modules.py"], "every_alpha"),
    Mutant("attention fallback: causal mask lets each token see the next one", "python",
           "translution_ext/ops/translution_attention.py",
           "mask = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)",
           "mask = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(2)",
           ["tests/test_translution_modules.py"], "causal and spec"),
    Mutant("fold fallback: BatchNorm eps dropped", "python", "translution_ext/ops/xvolution_fold.py",
           "t = g / torch.sqrt(v + e)", "t = g / torch.sqrt(v)", ["tests/test_xvolution_fold.py"], env=NO_NATIVE),
    Mutant("ACmix fallback: position term sign flipped", "python", "translution_ext/ops/acmix_window_attention.py",
           "+ pe_centre.unsqueeze(2)\n                                    - windows(pe))",
           "- pe_centre.unsqueeze(2)\n                                    + windows(pe))",
           ["tests/test_acmix_window_attention.py"], env=NO_NATIVE),
    # ---- C++ CPU kernels
    Mutant("C++ T(X): shift sign flipped", "cpp", "csrc/pixel_shift_products.h",
           "const int64_t yy = y + dy, xx = x + dx;", "const int64_t yy = y - dy, xx = x - dx;",
           ["tests/test_pixel_shift_products.py"], "spec"),
    Mutant("C++ fused attention: q and k index maps swapped in the pair groups", "cpp",
           "csrc/translution_attention.cpp",
           "const int64_t* kp = K.data_ptr<int64_t>();\n  const int64_t* qp = Q.data_ptr<int64_t>();",
           "const int64_t* kp = Q.data_ptr<int64_t>();\n  const int64_t* qp = K.data_ptr<int64_t>();",
           ["tests/test_translution_attention.py"], "spec and cpu"),
    Mutant("C++ fused attention: softmax scale 10% too large", "cpp", "csrc/cpu/translution_attention_forward_cpu.cpp",
           "dot(q + row * d, k + row * d, d) * scale;", "dot(q + row * d, k + row * d, d) * scale * T(1.1);",
           ["tests/test_translution_attention.py"], "spec and cpu"),
    Mutant("C++ relative projection: rows of a class's second 256-row tile written over its first", "cpp",
           "csrc/cpu/relative_offset_projection_cpu.cpp",
           "copy_row(out + g.class_row(class_pairs, count, row0 + m).out, y + m * g.D, g.D);",
           "copy_row(out + g.class_row(class_pairs, count, m).out, y + m * g.D, g.D);",
           ["tests/test_relative_offset_projection.py"], "spec and cpu"),
    Mutant("C++ ACmix: reflection off by one at the far edge (n -> n − 1: the edge repeated)", "cpp",
           "csrc/acmix_window_attention.h", "(i >= n ? 2 * (n - 1) - i : i)", "(i >= n ? 2 * n - 1 - i : i)",
           ["tests/test_acmix_window_attention.py"], "spec and cpu"),
    Mutant("C++ fold: BatchNorm eps dropped", "cpp", "csrc/xvolution_fold.cpp",
           "(vars[i].to(w.scalar_type()) + eps[i]).sqrt()", "vars[i].to(w.scalar_type()).sqrt()",
           ["tests/test_xvolution_fold.py"], "spec"),
    # ---- CUDA kernels on the emulator
    Mutant("CUDA relative projection: only the first kBK = 32 slice of the reduction over C", "cuda",
           "csrc/cuda/relative_offset_projection_cuda.cu",
           "for (int64_t k0 = 0; k0 < g.C; k0 += kBK) {",
           "for (int64_t k0 = 0; k0 < std::min<int64_t>(g.C, kBK); k0 += kBK) {",
           ["tests/test_relative_offset_projection.py"], "spec and emu"),
    Mutant("CUDA T(X): one shift of every 64-shift launch chunk left out", "cuda", "csrc/cuda/shift_chunks.cuh",
           "std::min<int64_t>(kShiftsPerLaunch, total - first)",
           "std::min<int64_t>(kShiftsPerLaunch - 1, total - first)",
           ["tests/test_pixel_shift_products.py"], "emu"),
]


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


class Copy:
    """The package copied to a temporary folder, with its builds."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="translution_mutants_")
        ignore = shutil.ignore_patterns("__pycache__", "*.so", "build", "*.egg-info")
        for name in COPIED:
            src, dst = os.path.join(ROOT, name), os.path.join(self.dir, name)
            if os.path.isdir(src):
                shutil.copytree(src, dst, ignore=ignore)
            elif os.path.exists(src):
                shutil.copy2(src, dst)
        libraries = glob.glob(os.path.join(ROOT, "translution_ext", "_C*.so"))
        if not libraries:
            raise SystemExit("build the extension first: python setup.py build_ext --inplace")
        for lib in libraries:
            shutil.copy2(lib, os.path.join(self.dir, "translution_ext"))
        self.extension_built = False
        self.emulator = None  # path of the emulation library once built

    def build_extension(self) -> bool:
        env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
        done = run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=self.dir, env=env)
        self.extension_built = True
        return done.returncode == 0

    def build_emulator(self) -> bool:
        build = os.path.join(self.dir, "build_emu")
        if self.emulator is None:
            configure = ["cmake", "-S", os.path.join(self.dir, "tests/cuda_emulator"), "-B", build, "-G", "Ninja",
                         f"-DPython3_EXECUTABLE={sys.executable}"]
            if run(configure).returncode:
                return False
            self.emulator = os.path.join(build, "libtranslution_ext_emu.so")
        return run(["cmake", "--build", build, "-j", os.environ.get("MAX_JOBS", "2")]).returncode == 0

    def build(self, kind: str) -> bool:
        if kind == "cpp":
            return self.build_extension()
        if kind == "cuda":
            return self.build_emulator()
        return True

    def pytest(self, mutant: Mutant) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=self.dir, **mutant.env)
        env.pop("CUDA_EMULATOR_LIBRARY", None)
        if mutant.kind == "cuda":
            env["CUDA_EMULATOR_LIBRARY"] = self.emulator
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutant.tests]
        if mutant.select:
            cmd += ["-k", mutant.select]
        return run(cmd, cwd=self.dir, env=env)

    def mutate(self, mutant: Mutant) -> str:
        target = os.path.join(self.dir, mutant.path)
        original = open(target).read()
        if original.count(mutant.old) != 1:
            raise SystemExit(f"{mutant.path}: the text to mutate must occur exactly once: {mutant.old!r}")
        with open(target, "w") as f:
            f.write(original.replace(mutant.old, mutant.new))
        return original

    def restore(self, mutant: Mutant, original: str) -> None:
        with open(os.path.join(self.dir, mutant.path), "w") as f:
            f.write(original)


def verdict(result: subprocess.CompletedProcess) -> Tuple[str, str]:
    """pytest's exit status 1 is a failed test (killed); 0 passed (survived); anything else an error."""
    last = (result.stdout.strip().splitlines() or [""])[-1]
    if result.returncode == 1:
        return "killed", last
    if result.returncode == 0:
        return "SURVIVED", last
    return "ERROR", last or result.stderr.strip()[-300:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run the mutants whose description contains this")
    parser.add_argument("--kinds", default="python,cpp,cuda", help="comma-separated: python, cpp, cuda")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if args.only in m.description and m.kind in args.kinds.split(",")]
    if args.list:
        for m in mutants:
            print(f"{m.kind:6} {m.description}  [{m.path}]")
        return 0
    copy = Copy()
    survivors = errors = 0
    try:
        for kind in ("python", "cpp", "cuda"):  # the C++ and CUDA builds only when their mutants are selected
            group = [m for m in mutants if m.kind == kind]
            if not group:
                continue
            if not copy.build(kind):
                print(f"the unmutated copy does not build ({kind})", file=sys.stderr)
                return 2
            # The same tests on the unmutated copy must pass, or a "killed" would mean nothing.
            baselines = {(tuple(m.tests), m.select, tuple(sorted(m.env.items()))): m for m in group}
            for m in baselines.values():
                status, last = verdict(copy.pytest(m))
                if status != "SURVIVED":
                    print(f"the unmutated copy fails the tests of '{m.description}': {last}", file=sys.stderr)
                    return 2
            for m in group:
                original = copy.mutate(m)
                try:
                    if not copy.build(kind):
                        status, last = "killed", "does not compile"
                    else:
                        status, last = verdict(copy.pytest(m))
                finally:
                    copy.restore(m, original)
                survivors += status == "SURVIVED"
                errors += status == "ERROR"
                print(f"{status:9} {m.description}  ({last})", flush=True)
            copy.build(kind)  # leave the library unmutated for the next group
    finally:
        shutil.rmtree(copy.dir, ignore_errors=True)
    print(f"{len(mutants)} mutants: {len(mutants) - survivors - errors} killed, {survivors} survived, {errors} errors")
    return 1 if survivors or errors else 0


if __name__ == "__main__":
    sys.exit(main())
