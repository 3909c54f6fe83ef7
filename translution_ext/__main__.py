"""Command line (also the console script ``translution-ext``)::

    python -m translution_ext demo [--quick]      # the Dynamic-MNIST experiment
    python -m translution_ext bench OP [...]      # time / GFLOP/s / memory vs same-run baselines
    python -m translution_ext info [--device D]   # what was compiled, which backends run here
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import torch

from . import __version__, _native
from ._cli import HelpFormatter, UsageError
from .nn.functional import BACKENDS, backend_unavailable_reason

OPS = {
    "relative_offset_projection": _native.NATIVE_DEVICE_TYPES,
    "translution_attention (fused)": _native.FUSED_DEVICE_TYPES,
    "acmix_window_attention": _native.ACMIX_DEVICE_TYPES,
    "pixel_shift_products (X-volution T(X))": _native.PIXEL_SHIFT_DEVICE_TYPES,
}


def backend_reasons(backend: str, device: str, dropout: float) -> List[str]:
    """Every reason why ``backend`` cannot run a layer with attention dropout ``dropout`` (while
    training) on ``device`` here; empty when it can."""
    reasons = ["no CUDA device here"] if device == "cuda" and not torch.cuda.is_available() else []
    kernels = backend_unavailable_reason(backend, torch.device(device), dropout_active=False)
    if kernels is not None:
        reasons.append(kernels)
    if backend == "fused" and dropout > 0:
        reasons.append(f"the fused kernels do not apply attention dropout ({dropout} while training)")
    return reasons


def info(device: str, dropout: float = 0.0) -> str:
    """What was compiled, and which Translution backends can run on ``device`` (and why not)
    for a layer with attention dropout ``dropout`` while training."""
    b = _native.build_info()
    lines = [f"translution_ext {__version__}, torch {torch.__version__}",
             f"native library: {'loaded from ' + b['library'] if b['native'] else 'not loaded: ' + str(b['load_error'])}"]
    if b["native"]:
        threads = "on torch's thread pool" if b["cpu_parallel"] else "on one thread (built without OpenMP)"
        lines.append(f"built against torch {b['torch_version']}; CPU kernels: {b['cpu']} ({threads}); "
                     f"CUDA kernels: {b['cuda']}"
                     + (f" (CUDA {b['cuda_version']}, archs {b['cuda_archs']})" if b["cuda"] else ""))
    lines.append(f"CUDA device available: {torch.cuda.is_available()}"
                 + (f" (torch {torch.__version__} is a CPU-only build)" if torch.version.cuda is None else ""))
    lines.append("native kernels by op:")
    for op, devices in OPS.items():
        lines.append(f"  {op:42} {', '.join(sorted(devices)) or 'none (pure-PyTorch reference)'}")
    layer = f"training with attention dropout {dropout}" if dropout > 0 else "no attention dropout"
    lines.append(f"Translution / AlphaTranslution backends on {device}, {layer} (auto takes the first that can run):")
    for backend in BACKENDS[1:]:
        reasons = backend_reasons(backend, device, dropout)
        lines.append(f"  {backend:10} {'cannot run: ' + '; '.join(reasons) if reasons else 'can run'}")
    if device == "cuda":
        lines.append("  (fused first: memory-linear, deterministic, 1 forward and 3-4 backward launches; a layer whose "
                     "head widths need more shared memory per block than the GPU has takes native)")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """Parses ``argv`` (default: sys.argv) and runs the subcommand; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m translution_ext", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    info_cmd = commands.add_parser("info", help="what was compiled and which backends can run here",
                                   formatter_class=HelpFormatter)
    info_cmd.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                          choices=["cpu", "cuda"], help="the device to report the backends for")
    info_cmd.add_argument("--dropout", type=float, default=0.0,
                          help="the layer's attention dropout (while training, some backends cannot apply it)")
    from . import demo
    from .profiler import cli as bench

    demo.add_arguments(commands.add_parser("demo", help="the Dynamic-MNIST experiment (needs the [demo] extra)",
                                           description=demo.DESCRIPTION, formatter_class=HelpFormatter))
    bench.add_arguments(commands.add_parser("bench", help="profile an op against its same-run baselines",
                                            description=bench.__doc__, formatter_class=HelpFormatter))
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return demo.run(args)
        if args.command == "bench":
            return bench.run(args)
    except UsageError as e:  # the user's request, not a bug: one line, no traceback
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return 2
    print(info(args.device, args.dropout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
