"""Proves that the emulated CUDA tests catch the bugs the emulator exists for: applies one mutation
at a time to a copy of the CUDA sources (a deleted __syncthreads(), a tile bound off by one),
rebuilds the emulation library incrementally, runs the emulated tests of that kernel, and
reports whether the tests failed (the mutant is killed).  Exit status 1 if any mutant survives.

    python scripts/mutation_check_cuda.py [--only SUBSTRING]   (uses the current Python's torch)

Takes a few minutes per mutant on 2 cores (one translation unit rebuilt each time).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELPROJ = "csrc/cuda/relative_offset_projection_cuda.cu"
ACMIX = "csrc/cuda/acmix_window_attention_cuda.cu"
GEMM = "csrc/cuda/block_gemm.cuh"
TESTS = {
    RELPROJ: ["tests/test_relative_offset_projection.py", "tests/test_cuda_emulator.py"],
    GEMM: ["tests/test_relative_offset_projection.py", "tests/test_cuda_emulator.py"],
    ACMIX: ["tests/test_acmix_window_attention.py", "tests/test_cuda_emulator.py"],
}


def barrier_mutants(path: str):
    """One mutant per __syncthreads() call in the file: the call deleted."""
    text = open(os.path.join(ROOT, path)).read()
    for n, m in enumerate(re.finditer(r"__syncthreads\(\);", text)):
        line = text.count("\n", 0, m.start()) + 1
        yield f"{path}:{line} __syncthreads() deleted", path, m.start(), m.end(), ";"


def bound_mutants():
    """Tile and window bounds made off by one (< becomes <=)."""
    cases = [
        (RELPROJ, "const bool ok = src_row[m] >= 0 && k0 + k < g.C;"),
        (RELPROJ, "const bool ok = k0 + k < g.C && n0 + n < g.D;"),
        (RELPROJ, "if (dst_row[m] >= 0 && n0 + n < g.D)"),
        (RELPROJ, "const bool ok = x_row[k] >= 0 && c0 + m < g.C;"),
        (RELPROJ, "if (b < g.B && k0 + k < g.D) {"),
        (RELPROJ, "if (s < g.Ns && b < g.B && n0 + n < g.C)"),
        (ACMIX, "if (yc < 0 || yc >= g.H || yc % g.stride) continue;"),
    ]
    for path, snippet in cases:
        text = open(os.path.join(ROOT, path)).read()
        start = text.index(snippet)
        mutated = snippet.replace(" < ", " <= ", 1) if " < " in snippet else snippet.replace(">= g.H", "> g.H")
        line = text.count("\n", 0, start) + 1
        yield f"{path}:{line} bound off by one: {mutated.strip()}", path, start, start + len(snippet), mutated


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run the mutants whose description contains this")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="cuda_mutants_")
    for folder in ("csrc", "tests/cuda_emulator"):
        shutil.copytree(os.path.join(ROOT, folder), os.path.join(work, folder))
    build = os.path.join(work, "build")
    configure = ["cmake", "-S", os.path.join(work, "tests/cuda_emulator"), "-B", build, "-G", "Ninja",
                 f"-DPython3_EXECUTABLE={sys.executable}"]
    if run(configure).returncode or run(["cmake", "--build", build, "-j2"]).returncode:
        print("the unmutated emulation library does not build", file=sys.stderr)
        return 2
    library = os.path.join(build, "libtranslution_ext_emu.so")
    env = dict(os.environ, CUDA_EMULATOR_LIBRARY=library, CUDA_EMULATOR_SCHEDULE="random:1")
    mutants = [m for path in (RELPROJ, GEMM) for m in barrier_mutants(path)] + list(bound_mutants())
    survivors = 0
    for description, path, start, end, replacement in mutants:
        if args.only not in description:
            continue
        target = os.path.join(work, path)
        original = open(target).read()
        open(target, "w").write(original[:start] + replacement + original[end:])
        try:
            built = run(["cmake", "--build", build, "-j2"])
            if built.returncode:
                verdict = "killed (does not compile)"
            else:
                tests = [os.path.join(ROOT, t) for t in TESTS[path]]
                result = run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "emu or race",
                              *tests], env=env, cwd=work)
                verdict = "killed" if result.returncode else "SURVIVED"
        finally:
            open(target, "w").write(original)
        survivors += verdict == "SURVIVED"
        print(f"{verdict:10} {description}", flush=True)
    run(["cmake", "--build", build, "-j2"])
    shutil.rmtree(work, ignore_errors=True)
    print(f"{survivors} mutant(s) survived")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
