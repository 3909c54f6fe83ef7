"""``python -m translution_ext demo``: the Dynamic-MNIST experiment of the Translution paper.

Every model trains on digits fixed at the centre of the canvas and is tested on the same
test digits at the centre ("static → static"), at random positions ("static → dynamic") and
moved by whole ViT patches ("static → whole-patch moves").
"""
from __future__ import annotations

import argparse
import io
import os
import time
from typing import Dict, List, Optional

import torch

from .. import __version__, _native, reparameterize_model
from .._cli import UsageError, positive_int, torch_device
from ..profiler.measure import device_name
from . import data, models, report, training

DESCRIPTION = __doc__
# The default run trains every model with three seeds (mean ± standard deviation); 3 epochs at
# batch 32 per seed keep its time that of the earlier single-seed run of 10 epochs at batch 64.
DEFAULT_EPOCHS, DEFAULT_BATCH, DEFAULT_SEEDS = 3, 32, (0, 1, 2)
# --quick: a check that everything runs and learns, not a measurement: one seed, fewer digits.
QUICK_EPOCHS, QUICK_TRAIN, QUICK_BATCH, QUICK_SEEDS = 2, 1000, 32, (0,)
LEARNING_RATES = {"vit_attention": 1e-3, "vit_translution": 1e-3, "vit_alpha": 1e-3, "cnn_acmix": 3e-3,
                  "cnn_xvolution": 3e-3}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The demo's command-line options."""
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run: {QUICK_EPOCHS} epochs on {QUICK_TRAIN} training digits, batch {QUICK_BATCH}, "
                        "one seed (about 2 minutes on 2 CPU cores); its accuracies are far from converged")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help=f"epochs per model and seed (default {DEFAULT_EPOCHS}; {QUICK_EPOCHS} with --quick)")
    p.add_argument("--models", nargs="+", default=list(models.MODEL_NAMES), choices=models.MODEL_NAMES,
                   metavar="MODEL", help="the models to train, from " + ", ".join(models.MODEL_NAMES))
    p.add_argument("--data", default="digits", choices=["digits", "mnist"],
                   help="digits: scikit-learn's 8x8 digits; mnist: IDX files under --root")
    p.add_argument("--root", default=None, help="folder with the MNIST IDX files (for --data mnist)")
    p.add_argument("--limit-train", type=positive_int, default=None, help="use only the first N training digits")
    p.add_argument("--limit-test", type=positive_int, default=None, help="use only the first N test digits")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"default {DEFAULT_BATCH}" + (f" ({QUICK_BATCH} with --quick)" if QUICK_BATCH != DEFAULT_BATCH
                                                       else ", also with --quick"))
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds of the data split, test positions, initialisation and batch order; every model "
                        f"trains once per seed (default {' '.join(map(str, DEFAULT_SEEDS))}; "
                        f"{' '.join(map(str, QUICK_SEEDS))} with --quick)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default="translution_demo", help="folder for results.json and results.png")
    p.add_argument("--require-native", action="store_true",
                   help="stop with an error instead of training when the native kernels are not loaded for the "
                        "device (scripts/demo.sh sets it: it has just compiled them)")


def _load(args, seed: int) -> data.DynamicMNIST:
    """The data set of --data for ``seed``; ViT patches are half a digit wide (a 6x6 grid on the 3-digit canvas).

    Raises UsageError when the digits cannot be read (missing files or scikit-learn)."""
    try:
        if args.data == "mnist":
            if not args.root:
                raise UsageError("--data mnist needs --root DIR, the folder with the MNIST IDX files")
            digits = data.load_mnist(args.root)
        else:
            digits = data.load_sklearn_digits(seed=seed)
    except (OSError, ValueError, RuntimeError) as e:  # the reader's messages name the file and the fix
        raise UsageError(str(e)) from None
    return data.build(digits, patch=digits.digit_size // 2, seed=seed, limit_train=args.limit_train,
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


def train_and_test(name: str, ds: data.DynamicMNIST, seed: int, epochs: int, batch_size: int,
                   device: torch.device):
    """Trains one model with one seed; returns (the model, its result: accuracies, time, loss history)."""
    torch.manual_seed(seed)
    model = models.build_model(name, ds.canvas_size, ds.digit_size // 2).to(device)
    history = training.train(model, ds.train, epochs=epochs, batch_size=batch_size, lr=LEARNING_RATES[name],
                             seed=seed, device=device, label=f"{name} seed {seed}")
    result = {key: training.accuracy(model, getattr(ds, test_set), batch_size, device)
              for key, test_set in report.TEST_SETS}
    return model, dict(seed=seed, **result, seconds_per_epoch=sum(h["seconds"] for h in history) / len(history),
                       final_loss=history[-1]["loss"], history=history)


def _settle(args) -> tuple:
    """Fills in the defaults that depend on --quick; returns (epochs, seeds)."""
    if args.quick and args.limit_train is None:
        args.limit_train = QUICK_TRAIN
    if args.batch_size is None:
        args.batch_size = QUICK_BATCH if args.quick else DEFAULT_BATCH
    epochs = args.epochs or (QUICK_EPOCHS if args.quick else DEFAULT_EPOCHS)
    seeds = list(args.seeds or (QUICK_SEEDS if args.quick else DEFAULT_SEEDS))
    return epochs, seeds


def run(args) -> int:
    """Runs the experiment; returns the exit status (1 when the deployed X-volution model differs)."""
    device = torch_device(args.device)
    start = time.perf_counter()
    epochs, seeds = _settle(args)
    try:  # now, not after the training
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {args.out}: cannot create the folder ({e.strerror})") from None
    native = native_status()
    if args.require_native and (not native["loaded"] or device.type not in native["device_types"]):
        raise UsageError(f"--require-native: {describe_native(native, device)}; the demo would time the "
                         "pure-PyTorch reference, not this package's kernels")
    runs: Dict[str, List[dict]] = {name: [] for name in args.models}
    built: Dict[str, torch.nn.Module] = {}
    deployment: Optional[dict] = None
    for seed in seeds:
        ds = _load(args, seed)
        if seed == seeds[0]:
            _print_setting(ds, epochs, args.batch_size, seeds, device, native)
        for name in args.models:
            built[name], result = train_and_test(name, ds, seed, epochs, args.batch_size, device)
            runs[name].append(result)
            if name == "cnn_xvolution" and deployment is None:  # one check is enough: it is exact or not
                deployment = check_deployment(built[name], ds.test_dynamic[0], device, args.batch_size)
    rows = [report.summarise(name, models.DESCRIPTIONS[name], sum(p.numel() for p in built[name].parameters()),
                             models.kernels(built[name], device), runs[name]) for name in args.models]
    print()
    print(report.table(rows))
    if deployment is not None:
        print(report.deployment_summary(deployment))
    json_path, png_path = os.path.join(args.out, "results.json"), os.path.join(args.out, "results.png")
    report.write_json(json_path, dict(
        experiment="dynamic_mnist", data=ds.source, digit_size=ds.digit_size, canvas_size=ds.canvas_size,
        patch_size=ds.digit_size // 2, train_digits=len(ds.train[1]), test_digits=len(ds.test_static[1]),
        epochs=epochs, batch_size=args.batch_size, seeds=seeds, device=str(device),
        device_name=device_name(device.type), native=native, torch=torch.__version__, translution_ext=__version__,
        seconds_total=time.perf_counter() - start, columns=dict(report.COLUMNS), results=rows,
        xvolution_deployment=deployment))
    title = (f"Dynamic MNIST ({ds.source}, {epochs} epoch{'s' * (epochs != 1)}, "
             + (f"mean ± std of {len(seeds)} seeds)" if len(seeds) > 1 else f"seed {seeds[0]})"))
    why_not = report.write_plot(png_path, rows, title)
    print(f"wrote {json_path}" + (f" and {png_path}" if why_not is None else f"; {why_not}"))
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0 if deployment is None or deployment["equal"] else 1


def _print_setting(ds: data.DynamicMNIST, epochs: int, batch_size: int, seeds: List[int], device: torch.device,
                   native: dict) -> None:
    patch = ds.digit_size // 2
    grid = ds.canvas_size // patch
    print(f"Dynamic MNIST: {ds.source}, {len(ds.train[1])} training / {len(ds.test_static[1])} test digits "
          f"on a {ds.canvas_size}x{ds.canvas_size} canvas; ViTs use {patch}x{patch} patches ({grid}x{grid} grid "
          f"+ class token)")
    print(f"{epochs} epochs per model and seed, batch {batch_size}, seeds {' '.join(map(str, seeds))}, "
          f"{device} ({device_name(device.type)})")
    print(describe_native(native, device))
