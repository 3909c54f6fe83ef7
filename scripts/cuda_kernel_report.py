"""Static evidence for the fused attention's CUDA kernels, without a GPU.

Compiles csrc/cuda/translution_attention_{forward,backward}_cuda.cu with nvcc for each
architecture (`-Xptxas -v`: registers, spills, shared memory, per kernel and dtype) and reads
the SASS with cuobjdump (tensor-core instructions, HMMA, per kernel).  Writes the table to
bench/results/translution_attention_cuda_kernels.{txt,json} and fails when a kernel spills
registers or when a GEMM kernel of fp16/bf16 has no HMMA instruction.

    python scripts/cuda_kernel_report.py [--archs 80 90] [--nvcc PATH] [--cuobjdump PATH]

Run with the python of an environment that has the CUDA build of torch (its headers are used);
scripts/check_cuda_build.sh runs it in CI.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["csrc/cuda/translution_attention_forward_cuda.cu", "csrc/cuda/translution_attention_backward_cuda.cu"]
GEMM_KERNELS = ("attention_forward_kernel", "attention_backward_query_kernel", "attention_backward_key_kernel",
                "attention_backward_table_kernel")
DTYPES = {"c10::Half": "float16", "c10::BFloat16": "bfloat16", "float": "float32", "double": "float64"}


def demangle(names: list[str]) -> dict[str, str]:
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def kernel_and_dtype(pretty: str) -> tuple[str, str]:
    match = re.search(r"(\w+_kernel)<([^>]+)>", pretty)
    if not match:
        return pretty, "?"
    return match.group(1), DTYPES.get(match.group(2).strip(), match.group(2).strip())


def parse_ptxas(log: str) -> list[dict]:
    """One record per (entry function, arch) from `ptxas -v` output."""
    records, current = [], None
    for line in log.splitlines():
        entry = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
        if entry:
            current = {"mangled": entry.group(1), "arch": entry.group(2)}
            records.append(current)
            continue
        if current is None:
            continue
        spill = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if spill:
            current.update(stack=int(spill.group(1)), spill_stores=int(spill.group(2)),
                           spill_loads=int(spill.group(3)))
        used = re.search(r"Used (\d+) registers", line)
        if used:
            current["registers"] = int(used.group(1))
            smem = re.search(r"(\d+) bytes smem", line)
            current["static_smem"] = int(smem.group(1)) if smem else 0
    return records


def hmma_counts(cuobjdump: str, obj: Path) -> dict[tuple[str, str], int]:
    """HMMA instructions per (mangled function, arch) in the object's SASS."""
    run = subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"cuda_kernel_report: {cuobjdump} -sass failed on {obj.name}: {run.stderr.strip()}")
    sass = run.stdout
    counts, arch, function = {}, None, None
    for line in sass.splitlines():
        a = re.search(r"arch = (sm_\d+)", line)
        if a:
            arch = a.group(1)
        f = re.search(r"Function : (\S+)", line)
        if f:
            function = f.group(1)
            counts.setdefault((function, arch), 0)
        if function and re.search(r"\bHMMA\b", line):
            counts[(function, arch)] += 1
    return counts


def torch_includes() -> list[str]:
    from torch.utils.cpp_extension import include_paths
    paths = include_paths("cuda")
    site = Path(paths[0]).parent.parent
    paths += [str(p) for p in site.glob("nvidia/cu*/include")]
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["80", "90"])
    parser.add_argument("--nvcc", default=shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc")
    parser.add_argument("--cuobjdump", default=None,
                        help="default: next to nvcc, else the one triton ships (with its nvdisasm)")
    parser.add_argument("--out", default=str(ROOT / "bench/results/translution_attention_cuda_kernels"))
    args = parser.parse_args()
    cuobjdump = args.cuobjdump or shutil.which("cuobjdump") or str(Path(args.nvcc).resolve().parent / "cuobjdump")
    if not Path(cuobjdump).exists():
        # The CUDA build of torch depends on triton, which ships cuobjdump and the nvdisasm it needs.
        shipped = list(Path(torch_includes()[0]).parent.parent.glob("triton/backends/nvidia/bin/cuobjdump"))
        if not shipped:
            sys.exit("cuda_kernel_report: cuobjdump not found: pass --cuobjdump (it needs nvdisasm beside it)")
        cuobjdump = str(shipped[0])
    nvcc_version = subprocess.run([args.nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    flags = ["-c", "-std=c++20", "-O3", "--expt-relaxed-constexpr", "-Xptxas", "-v", f"-I{ROOT / 'csrc'}",
             "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
             "-U__CUDA_NO_HALF2_OPERATORS__", *(f"-I{p}" for p in torch_includes())]
    for arch in args.archs:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        objs = {source: Path(tmp) / (Path(source).stem + ".o") for source in SOURCES}
        # One nvcc per source, side by side (each compiles every arch of its file on one core).
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(SOURCES)) as pool:
            runs = dict(zip(SOURCES, pool.map(
                lambda source: subprocess.run([args.nvcc, *flags, str(ROOT / source), "-o", str(objs[source])],
                                              capture_output=True, text=True), SOURCES)))
        for source in SOURCES:
            obj, run = objs[source], runs[source]
            if run.returncode:
                sys.exit(f"cuda_kernel_report: nvcc failed on {source}:\n{run.stderr[-4000:]}")
            found = parse_ptxas(run.stderr + run.stdout)
            hmma = hmma_counts(cuobjdump, obj)
            pretty = demangle([r["mangled"] for r in found])
            for r in found:
                r["kernel"], r["dtype"] = kernel_and_dtype(pretty[r["mangled"]])
                r["hmma"] = hmma.get((r["mangled"], r["arch"]), 0)
                r["source"] = source
                records.append(r)
    records.sort(key=lambda r: (r["kernel"], r["arch"], r["dtype"]))
    problems = []
    for r in records:
        if r.get("spill_stores", 0) or r.get("spill_loads", 0):
            problems.append(f"{r['kernel']}<{r['dtype']}> {r['arch']}: spills {r['spill_stores']} B stored, "
                            f"{r['spill_loads']} B loaded")
        if r["kernel"] in GEMM_KERNELS and r["dtype"] in ("float16", "bfloat16") and r["hmma"] == 0:
            problems.append(f"{r['kernel']}<{r['dtype']}> {r['arch']}: no HMMA (tensor-core) instruction in the SASS")
    header = (f"# Fused Translution attention: CUDA kernels, static evidence (no GPU needed)\n"
              f"# date {datetime.date.today()}, {nvcc_version.strip().splitlines()[-1]}, "
              f"archs {' '.join('sm_' + a for a in args.archs)}\n"
              f"# made by: python scripts/cuda_kernel_report.py\n"
              f"# registers per thread, spill bytes (stores/loads), static shared memory (the kernels' tiles are\n"
              f"# dynamic shared memory, sized per head width at launch), HMMA = tensor-core instructions in SASS\n")
    lines = [f"{'kernel':36} {'arch':6} {'dtype':9} {'regs':>4} {'spill st/ld':>11} {'stack':>5} {'HMMA':>5}"]
    for r in records:
        lines.append(f"{r['kernel']:36} {r['arch']:6} {r['dtype']:9} {r.get('registers', 0):4d} "
                     f"{str(r.get('spill_stores', 0)) + '/' + str(r.get('spill_loads', 0)):>11} {r.get('stack', 0):5d} "
                     f"{r['hmma']:5d}")
    text = header + "\n".join(lines) + "\n" + ("\nPROBLEMS:\n" + "\n".join(problems) + "\n" if problems else
                                               "\nno spills; HMMA in every fp16/bf16 GEMM kernel\n")
    print(text)
    Path(args.out + ".txt").write_text(text)
    for r in records:
        r.pop("mangled")
    Path(args.out + ".json").write_text(json.dumps({"date": str(datetime.date.today()), "nvcc": nvcc_version,
                                                   "kernels": records, "problems": problems}, indent=1) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
