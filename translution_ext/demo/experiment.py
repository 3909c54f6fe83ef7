"""``python -m translution_ext demo``: the Dynamic-MNIST experiment of the Translution paper.

Every model trains on digits fixed at the centre of the canvas and is tested on the same
test digits at the centre (static -> static) and at random positions (static -> dynamic).
"""
from __future__ import annotations

import argparse
import io
import os
import time
from typing import List, Optional

import torch

from .. import __version__, _native, reparameterize_model
from ..profiler.measure import device_name
from . import data, models, report, training

DESCRIPTION = __doc__
# --quick: fewer, smaller steps (batch 32 gives the short run twice the updates).
QUICK_EPOCHS, QUICK_TRAIN, QUICK_BATCH = 2, 1000, 32
DEFAULT_EPOCHS, DEFAULT_BATCH = 10, 64
LEARNING_RATES = {"vit_attention": 1e-3, "vit_translution": 1e-3, "vit_alpha": 1e-3, "cnn_acmix": 3e-3,
                  "cnn_xvolution": 3e-3}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The demo's command-line options."""
    p.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs on {QUICK_TRAIN} training digits, batch {QUICK_BATCH} "
                        "(under 2 minutes on 2 CPU cores)")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs per model (default {DEFAULT_EPOCHS})")
    p.add_argument("--models", nargs="+", default=list(models.MODEL_NAMES), choices=models.MODEL_NAMES)
    p.add_argument("--data", default="digits", choices=["digits", "mnist"],
                   help="digits: scikit-learn's 8x8 digits (default); mnist: IDX files under --root")
    p.add_argument("--root", default=None, help="folder with the MNIST IDX files (for --data mnist)")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training digits")
    p.add_argument("--limit-test", type=int, default=None, help="use only the first N test digits")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"default {DEFAULT_BATCH} ({QUICK_BATCH} with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default="translution_demo", help="folder for results.json and results.png")


def _load(args) -> data.DynamicMNIST:
    """The data set of --data; ViT patches are half a digit wide (a 6x6 grid on the 3-digit canvas)."""
    if args.data == "mnist":
        if not args.root:
            raise SystemExit("--data mnist needs --root DIR, the folder with the MNIST IDX files")
        digits = data.load_mnist(args.root)
    else:
        digits = data.load_sklearn_digits(seed=args.seed)
    return data.build(digits, patch=digits.digit_size // 2, seed=args.seed, limit_train=args.limit_train,
                      limit_test=args.limit_test)


def _state_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def check_deployment(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
                     batch_size: int) -> dict:
    """Re-parameterises a trained model and compares outputs, size and latency with the training form."""
    model.eval()
    deployed = reparameterize_model(model)
    trained_logits = training.predict(model, images, batch_size, device)
    deployed_logits = training.predict(deployed, images, batch_size, device)
    diff = (trained_logits - deployed_logits).abs().max().item()
    scale = trained_logits.abs().max().item()
    batch = images[:256].to(device)
    return dict(max_abs_diff=diff, relative_diff=diff / max(scale, 1e-12), equal=diff <= 1e-4 * max(scale, 1.0),
                training_params=sum(p.numel() for p in model.parameters()),
                deployed_params=sum(p.numel() for p in deployed.parameters()),
                training_bytes=_state_bytes(model), deployed_bytes=_state_bytes(deployed),
                latency_batch=len(batch), training_latency_ms=training.latency_ms(model, batch),
                deployed_latency_ms=training.latency_ms(deployed, batch))


def native_status() -> dict:
    """Whether the compiled kernels are loaded (and from where), for the log and results.json."""
    info = _native.build_info()
    return dict(loaded=info["native"], library=info["library"], load_error=info["load_error"],
                device_types=info["native_device_types"])


def describe_native(status: dict, device: torch.device) -> str:
    """One line: which kernels the models will run with on ``device``."""
    if not status["loaded"]:
        return f"native kernels: NOT loaded, every model runs the pure-PyTorch reference ({status['load_error']})"
    where = "" if device.type in status["device_types"] else f"; none for {device.type}, which runs the reference"
    return f"native kernels: loaded from {status['library']} (for {', '.join(status['device_types'])}{where})"


def run(args) -> int:
    """Runs the experiment; returns the exit status (1 when the deployed X-volution model differs)."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    epochs = args.epochs or (QUICK_EPOCHS if args.quick else DEFAULT_EPOCHS)
    start = time.perf_counter()
    if args.quick and args.limit_train is None:
        args.limit_train = QUICK_TRAIN
    if args.batch_size is None:
        args.batch_size = QUICK_BATCH if args.quick else DEFAULT_BATCH
    ds = _load(args)
    patch = ds.digit_size // 2
    grid = ds.canvas_size // patch
    print(f"Dynamic MNIST: {ds.source}, {len(ds.train[1])} training / {len(ds.test_static[1])} test digits "
          f"on a {ds.canvas_size}x{ds.canvas_size} canvas; ViTs use {patch}x{patch} patches ({grid}x{grid} grid "
          f"+ class token)")
    print(f"{epochs} epochs per model, batch {args.batch_size}, seed {args.seed}, {device} ({device_name(device.type)})")
    native = native_status()
    print(describe_native(native, device))
    rows: List[dict] = []
    deployment: Optional[dict] = None
    for name in args.models:
        torch.manual_seed(args.seed)
        model = models.build_model(name, ds.canvas_size, patch).to(device)
        history = training.train(model, ds.train, epochs=epochs, batch_size=args.batch_size,
                                 lr=LEARNING_RATES[name], seed=args.seed, device=device, label=name)
        rows.append(dict(model=name, description=models.DESCRIPTIONS[name],
                         params=sum(p.numel() for p in model.parameters()),
                         kernels=models.kernels(model, device),
                         acc_static=training.accuracy(model, ds.test_static, args.batch_size, device),
                         acc_dynamic=training.accuracy(model, ds.test_dynamic, args.batch_size, device),
                         acc_aligned=training.accuracy(model, ds.test_aligned, args.batch_size, device),
                         seconds_per_epoch=sum(h["seconds"] for h in history) / len(history),
                         final_loss=history[-1]["loss"], history=history))
        if name == "cnn_xvolution":
            deployment = check_deployment(model, ds.test_dynamic[0], device, args.batch_size)
    print()
    print(report.table(rows))
    if deployment is not None:
        print(report.deployment_summary(deployment))
    os.makedirs(args.out, exist_ok=True)
    json_path, png_path = os.path.join(args.out, "results.json"), os.path.join(args.out, "results.png")
    report.write_json(json_path, dict(
        experiment="dynamic_mnist", data=ds.source, digit_size=ds.digit_size, canvas_size=ds.canvas_size,
        patch_size=patch, epochs=epochs, batch_size=args.batch_size, seed=args.seed, device=str(device),
        device_name=device_name(device.type), native=native,
        torch=torch.__version__, translution_ext=__version__, seconds_total=time.perf_counter() - start,
        results=rows, xvolution_deployment=deployment))
    why_not = report.write_plot(png_path, rows, f"Dynamic MNIST ({ds.source}, {epochs} epochs)")
    print(f"wrote {json_path}" + (f" and {png_path}" if why_not is None else f"; {why_not}"))
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0 if deployment is None or deployment["equal"] else 1
