"""What the command-line tools (demo, bench, info) share: usage errors, help format, device choice."""
from __future__ import annotations

import argparse

import torch


class UsageError(Exception):
    """A request the command cannot serve (bad option, missing files, no such device).

    ``python -m translution_ext`` prints its message as one line and exits with status 2,
    without a traceback.
    """


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default (except None and False, which mean "not set") and keeps
    the description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        if isinstance(action.default, (list, tuple)):
            return f"{action.help or ''} (default: {' '.join(map(str, action.default))})"
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def torch_device(name: str) -> torch.device:
    """``name`` ("cpu", "cuda", "cuda:1", ...) as a device this process can use; else UsageError."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device name (try cpu or cuda)") from None
    if device.type == "cuda":
        if torch.version.cuda is None:
            raise UsageError(f"--device {name}: this torch ({torch.__version__}) is a CPU-only build; install a "
                             "CUDA build of torch (then reinstall translution_ext) or use --device cpu")
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device is available (torch.cuda.is_available() is False)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type != "cpu":
        raise UsageError(f"--device {name}: the demo and bench run on cpu or cuda")
    return device
