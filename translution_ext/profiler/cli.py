"""``python -m translution_ext bench``: time, useful GFLOP/s and peak memory of an op against
its same-run baselines, over a sweep of lengths; a table, JSON and (``--plot``) a PNG.

Every (length, implementation) runs in its own process so that its peak memory (CPU: peak
RSS growth; CUDA: max allocated) is its own.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import sys
from typing import Dict, List, Optional

import torch

from .. import _plotting
from .._cli import UsageError, positive_int, torch_device
from .cases import BASELINE, OPS, PASS, ROOFLINE, Setting, describe, tokens
from .measure import PeakMemory, WorkerError, device_name, run_json_worker, timed

DEFAULT_LENGTHS = {"relproj": [64, 128, 256], "translution": [64, 128, 256, 512], "acmix": [14, 28],
                   "xvolution": [14, 28, 56]}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bench command's options (and the hidden --worker of its measurement processes)."""
    p.add_argument("op", choices=sorted(OPS), help="what to measure")
    p.add_argument("--lengths", type=positive_int, nargs="+", default=None,
                   help="tokens N (1D layouts) or grid/image side (2d_cls, acmix, xvolution); "
                        "defaults: " + "; ".join(f"{k} {v}" for k, v in DEFAULT_LENGTHS.items()))
    p.add_argument("--impls", nargs="+", default=None, help="a subset of the op's implementations")
    p.add_argument("--batch", type=positive_int, default=None, help="8 on CPU, 32 on CUDA by default")
    p.add_argument("--dim", type=positive_int, default=192, help="channels C (and D = C)")
    p.add_argument("--heads", type=positive_int, default=3, help="attention heads (translution, acmix, sdpa)")
    p.add_argument("--dtype", default=None, choices=["float32", "float64", "bfloat16", "float16"],
                   help="float32 on CPU, bfloat16 on CUDA by default")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    p.add_argument("--backend", default="auto", choices=["auto", "fused", "native", "reference"],
                   help="the Translution backend of 'ours'")
    p.add_argument("--layout", default="1d", choices=["1d", "causal", "2d_cls"],
                   help="token layout of relproj / translution")
    p.add_argument("--relative", default="qkv", help="relative roles of translution")
    p.add_argument("--window", type=positive_int, default=7, help="ACmix attention window")
    p.add_argument("--pssa-kernel-size", type=positive_int, default=1, choices=[1, 3],
                   help="X-volution's Ka, the kernel of the conv on T(X) (K = 3)")
    p.add_argument("--reference-gb", type=float, default=4.0,
                   help="memory the reference approach may take; beyond it, it runs on fewer query rows "
                        "and its time is scaled to all rows")
    p.add_argument("--repeat", type=positive_int, default=3, help="timed calls after a warm-up; the best counts")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--plot", default=None, help="write a PNG of time and memory against length here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def measure(setting: Setting) -> dict:
    """Runs one setting in this process: time of the step (scaled to the full workload) and peak memory."""
    build, _ = OPS[setting.op]
    torch.manual_seed(0)
    memory = PeakMemory(setting.device)
    work = build(setting)
    seconds = timed(work.step, setting.device, setting.repeat) * work.scale
    return dict(op=setting.op, impl=setting.impl, length=setting.length, tokens=tokens(setting), seconds=seconds,
                gflops=work.flops / seconds / 1e9, peak_mb=memory.extra_mb(), **work.notes)


def _in_subprocess(setting: Setting) -> dict:
    cmd = [sys.executable, "-m", "translution_ext", "bench", setting.op, "--worker",
           json.dumps(dataclasses.asdict(setting))]
    try:
        return run_json_worker(cmd)
    except WorkerError as e:
        return dict(op=setting.op, impl=setting.impl, length=setting.length, tokens=tokens(setting), error=str(e))


def _fmt(r: dict, ours: Optional[dict]) -> str:
    if "error" in r:
        return f"{r['impl']:10} failed: {r['error']}"
    ratio = f"{r['seconds'] / ours['seconds']:.2f}" if ours and "seconds" in ours else "-"
    note = (f"timed on {r['timed_rows']} of {r['full_rows']} rows and scaled (memory: at those rows)"
            if "timed_rows" in r else "")
    return (f"{r['impl']:10} {r['seconds'] * 1e3:10.2f} {r['gflops']:9.1f} {r['peak_mb']:9.1f} {ratio:>9}  {note}")


def _times(ratio: float, more: str, less: str) -> str:
    return f"{ratio:.1f}x {more}" if ratio >= 1 else f"{1 / ratio:.1f}x {less}"


def _partial_note(r: dict, what: str) -> str:
    """For a measurement on fewer rows than the full workload: " (time extrapolated from 32 of 128 rows)"."""
    return f" ({what} extrapolated from {r['timed_rows']} of {r['full_rows']} rows)" if "timed_rows" in r else ""


def _memory_comparison(base: dict, ours: dict) -> str:
    """Peak memory of ours against the baseline; none when the baseline ran on fewer rows, whose
    memory says nothing about the full size."""
    if "timed_rows" in base:
        return (f"peak memory not measured at full size (it ran on {base['timed_rows']} of "
                f"{base['full_rows']} rows)")
    if min(base["peak_mb"], ours["peak_mb"]) < 1:
        return "peak memory under 1 MB"
    return f"{_times(base['peak_mb'] / ours['peak_mb'], 'less', 'more')} peak memory"


def summary(op: str, by_impl: Dict[str, dict]) -> str:
    """The same-run ratios of one length: ours vs the baseline, the roofline and SDPA."""
    ours = by_impl.get("ours")
    if not ours or "seconds" not in ours:
        return ""
    parts = []
    base = by_impl.get(BASELINE[op])
    if base and "seconds" in base:
        parts.append(f"{_times(base['seconds'] / ours['seconds'], 'faster', 'slower')} than {BASELINE[op]}"
                     f"{_partial_note(base, 'time')}, {_memory_comparison(base, ours)}")
    roof = by_impl.get(ROOFLINE[op])
    if roof and "seconds" in roof:
        parts.append(f"{roof['seconds'] / ours['seconds']:.2f} of the {ROOFLINE[op]} roofline{_partial_note(roof, 'time')}")
    sdpa = by_impl.get("sdpa")
    if sdpa and "seconds" in sdpa:
        parts.append(f"{ours['seconds'] / sdpa['seconds']:.1f}x the time of SDPA")
    return "ours: " + "; ".join(parts)


def write_plot(path: str, op: str, results: List[dict], title: str) -> Optional[str]:
    """Time and peak memory against tokens, one line per implementation; why not, if matplotlib is missing.

    A measurement on fewer rows than the full workload is drawn hollow: its time is scaled to all
    rows; its memory, at those rows, is off the line and labelled with the rows it ran on.  Failed
    measurements are listed under the plots.
    """
    plt = _plotting.pyplot()
    if plt is None:
        return _plotting.MISSING
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4.4))
    for impl in OPS[op][1]:
        pts = [r for r in results if r["impl"] == impl and "seconds" in r]
        if not pts:
            continue
        line, = ax_t.plot([r["tokens"] for r in pts], [1e3 * r["seconds"] for r in pts], marker="o", label=impl)
        whole = [r for r in pts if "timed_rows" not in r]
        partial = [r for r in pts if "timed_rows" in r]
        ax_m.plot([r["tokens"] for r in whole], [max(r["peak_mb"], 1e-1) for r in whole], marker="o",
                  color=line.get_color(), label=impl)
        for r in partial:
            ax_t.plot(r["tokens"], 1e3 * r["seconds"], marker="o", markerfacecolor="white", color=line.get_color())
            ax_m.plot(r["tokens"], max(r["peak_mb"], 1e-1), marker="o", markerfacecolor="white",
                      color=line.get_color(), linestyle="none")
            ax_m.annotate(f"{r['timed_rows']}/{r['full_rows']} rows", (r["tokens"], max(r["peak_mb"], 1e-1)),
                          textcoords="offset points", xytext=(4, -10), fontsize=7, color=line.get_color())
    for ax, label in ((ax_t, "time (ms)"), (ax_m, "peak memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend()
    notes = []
    if any("timed_rows" in r for r in results):
        notes.append("hollow: measured on the first rows only (time scaled to all rows; memory at those rows)")
    failed = [f"{r['impl']} at {r['tokens']} tokens" for r in results if "error" in r]
    if failed:
        notes.append("failed, not drawn: " + ", ".join(failed))
    if notes:
        fig.supxlabel("\n".join(notes), fontsize=7, x=0.01, ha="left")
    fig.suptitle(title, fontsize=9)
    _plotting.save(fig, path)
    return None


def run(args) -> int:
    """Measures every (length, implementation), prints the table; returns 1 if any measurement failed."""
    if args.worker:
        print(json.dumps(measure(Setting(**json.loads(args.worker)))))
        return 0
    torch_device(args.device)
    impls = args.impls or list(OPS[args.op][1])
    unknown = sorted(set(impls) - set(OPS[args.op][1]))
    if unknown:
        raise UsageError(f"--impls: {args.op} has no {', '.join(unknown)}; choose from {', '.join(OPS[args.op][1])}")
    base = Setting(op=args.op, impl="", length=0, batch=args.batch or (8 if args.device == "cpu" else 32),
                   dim=args.dim, heads=args.heads, dtype=args.dtype or ("float32" if args.device == "cpu" else "bfloat16"),
                   device=args.device, backend=args.backend, layout=args.layout, relative=args.relative,
                   window=args.window, pssa_kernel_size=args.pssa_kernel_size, reference_gb=args.reference_gb,
                   repeat=args.repeat)
    title = (f"{args.op} {PASS[args.op]}, {base.device} ({device_name(base.device)}), {base.dtype}, B={base.batch}, "
             f"C={base.dim}, {base.heads} heads" + (f", layout {base.layout}" if args.op in ("relproj", "translution")
                                                   else "")
             + (f", K = 3, Ka = {base.pssa_kernel_size}" if args.op == "xvolution" else ""))
    print(title)
    print(describe(args.op))
    print("GFLOP/s counts the FLOPs above; 'vs ours' is the time ratio")
    print(f"{'impl':10} {'ms':>10} {'GFLOP/s':>9} {'peak MB':>9} {'vs ours':>9}")
    results = []
    for length in args.lengths or DEFAULT_LENGTHS[args.op]:
        print(f"-- length {length} ({tokens(dataclasses.replace(base, length=length))} tokens)")
        by_impl = {}
        for impl in impls:
            by_impl[impl] = r = _in_subprocess(dataclasses.replace(base, impl=impl, length=length))
            results.append(r)
            print(_fmt(r, by_impl.get("ours")), flush=True)
        line = summary(args.op, by_impl)
        if line:
            print(line)
    meta = dict(op=args.op, setting={k: v for k, v in dataclasses.asdict(base).items() if k not in ("impl", "length")},
                flops=describe(args.op), device=device_name(base.device), torch=torch.__version__,
                python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        why_not = write_plot(args.plot, args.op, results, title)
        print(why_not or f"wrote {args.plot}")
    return 1 if any("error" in r for r in results) else 0
