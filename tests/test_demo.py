"""The Dynamic-MNIST demo: data placement, the IDX reader, and end-to-end runs."""
import gzip
import json
import os
import stat
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from translution_ext.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from translution_ext.demo import data, models
from translution_ext.demo.progress import Progress


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def fake_mnist(root, n_train=24, n_test=12, seed=0, compress=False):
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), compress)
        write_idx(root / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,), dtype=np.uint8), compress)


def test_place_puts_each_digit_at_its_corner():
    images = torch.rand(3, 8, 8)
    positions = torch.tensor([[0, 0], [16, 3], [8, 8]])
    canvas = data.place(images, positions, 24)
    assert canvas.shape == (3, 1, 24, 24)
    for img, (r, c), out in zip(images, positions.tolist(), canvas):
        assert torch.equal(out[0, r:r + 8, c:c + 8], img)
        assert out.sum().item() == pytest.approx(img.sum().item())


def test_positions_centre_random_and_patch_aligned():
    assert data.centre_positions(2, 8, 24).tolist() == [[8, 8], [8, 8]]
    rand = data.random_positions(500, 8, 24, seed=1)
    assert rand.min() >= 0 and rand.max() <= 16 and len(rand.unique()) == 17
    assert torch.equal(rand, data.random_positions(500, 8, 24, seed=1))
    aligned = data.aligned_positions(500, 28, 84, step=14, seed=2)
    assert set(aligned.unique().tolist()) == {0, 14, 28, 42, 56}


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_reader(tmp_path, compress):
    fake_mnist(tmp_path, compress=compress)
    digits = data.load_mnist(str(tmp_path))
    assert digits.train_images.shape == (24, 28, 28) and digits.test_labels.shape == (12,)
    assert 0.0 <= digits.train_images.min() and digits.train_images.max() <= 1.0
    raw = data.read_idx(str(tmp_path), "train-labels-idx1-ubyte")
    assert torch.equal(digits.train_labels, torch.from_numpy(raw.astype(np.int64)))
    ds = data.build(digits, patch=14, limit_train=10)
    assert ds.canvas_size == 84 and ds.train[0].shape == (10, 1, 84, 84)
    # Static and dynamic test sets hold the same digits, moved.
    assert torch.allclose(ds.test_static[0].sum((1, 2, 3)), ds.test_dynamic[0].sum((1, 2, 3)))


def test_mnist_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.load_mnist(str(tmp_path))
    fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">I", 12) + bytes(48))
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        data.load_mnist(str(tmp_path))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="differ in count"):
        data.load_mnist(str(tmp_path))


def test_sklearn_digits_split_is_fixed():
    a, b = data.load_sklearn_digits(seed=0), data.load_sklearn_digits(seed=0)
    assert a.digit_size == 8 and len(a.train_labels) + len(a.test_labels) == 1797
    assert torch.equal(a.test_labels, b.test_labels) and torch.equal(a.train_images, b.train_images)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_models_classify_canvas_images(name):
    torch.manual_seed(0)
    model = models.build_model(name, canvas=24, patch=4)
    out = model(torch.rand(2, 1, 24, 24))
    assert out.shape == (2, 10)
    out.sum().backward()
    with pytest.raises(ValueError, match="model must be one of"):
        models.build_model("resnet", 24, 4)


def test_progress_prints_a_final_line(capsys):
    import sys

    with Progress("train", 3, stream=sys.stdout) as bar:
        for _ in range(3):
            bar.update(1, loss=0.5)
    assert "train [" in capsys.readouterr().out


def test_demo_end_to_end_on_mnist_files(tmp_path, capsys):
    """Every model, the table, the JSON, the PNG and the X-volution deployment check."""
    (tmp_path / "mnist").mkdir()
    fake_mnist(tmp_path / "mnist", n_train=16, n_test=8)
    out = tmp_path / "out"
    status = main(["demo", "--data", "mnist", "--root", str(tmp_path / "mnist"), "--epochs", "1",
                   "--batch-size", "8", "--seeds", "0", "--out", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    for name in models.MODEL_NAMES:
        assert name in printed
    assert "X-volution re-parameterised" in printed and "-> equal" in printed
    result = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in result["results"]] == list(models.MODEL_NAMES)
    assert result["canvas_size"] == 84 and result["patch_size"] == 14
    for r in result["results"]:
        assert 0.0 <= r["acc_static"] <= 1.0 and 0.0 <= r["acc_dynamic"] <= 1.0 and r["params"] > 0
    deployment = result["xvolution_deployment"]
    assert deployment["equal"] and deployment["relative_diff"] < 1e-5
    assert isinstance(deployment["deployed_latency_ms"], float)  # a timing: its schema, not its value
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_quick_on_sklearn_digits(tmp_path, capsys):
    status = main(["demo", "--quick", "--limit-train", "64", "--limit-test", "32", "--models", "vit_translution",
                   "--out", str(tmp_path)])
    assert status == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["data"].startswith("scikit-learn digits") and result["epochs"] == 2 and result["batch_size"] == 32
    assert result["seeds"] == [0] and result["results"][0]["seeds"] == [0]
    assert result["xvolution_deployment"] is None


def test_demo_records_which_kernels_ran(tmp_path, capsys):
    import translution_ext
    from translution_ext import _native

    status = main(["demo", "--epochs", "1", "--limit-train", "16", "--limit-test", "8", "--batch-size", "8",
                   "--seeds", "0", "--models", "vit_attention", "vit_alpha", "cnn_acmix", "--out", str(tmp_path)])
    assert status == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "results.json").read_text())
    native = result["native"]
    assert native["loaded"] == translution_ext.has_native() and result["device"] == "cpu"
    kernels = {r["model"]: r["kernels"] for r in result["results"]}
    assert kernels["vit_attention"] == {"Attention": "torch"}
    if native["loaded"]:
        assert native["library"] and f"native kernels: loaded from {native['library']}" in printed
        assert kernels["vit_alpha"] == {"AlphaTranslution": "fused" if "cpu" in _native.FUSED_DEVICE_TYPES else
                                        "native"}
        assert kernels["cnn_acmix"] == {"ACmix": "native"}
    else:
        assert "native kernels: NOT loaded" in printed
        assert kernels["vit_alpha"] == {"AlphaTranslution": "reference"}
        assert kernels["cnn_acmix"] == {"ACmix": "reference"}
    assert "AlphaTranslution: " + kernels["vit_alpha"]["AlphaTranslution"] in printed


def test_demo_require_native_stops_without_the_kernels(tmp_path, capsys, monkeypatch):
    from translution_ext.demo import experiment

    monkeypatch.setattr(experiment, "native_status", lambda: dict(loaded=False, library=None, device_types=[],
                                                                  load_error="no _C library next to the package"))
    assert main(["demo", "--require-native", "--quick", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "--require-native: native kernels: NOT loaded" in error and "no _C library" in error
    assert not (tmp_path / "results.json").exists()


def test_demo_argument_errors(tmp_path, capsys):
    assert main(["demo", "--data", "mnist", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("python -m translution_ext demo: error: --data mnist needs --root DIR, "
                                       "the folder with the MNIST IDX files\n")
    if not torch.cuda.is_available():
        assert main(["demo", "--device", "cuda", "--out", str(tmp_path)]) == 2
        error = capsys.readouterr().err
        reason = "is a CPU-only build" if torch.version.cuda is None else "no CUDA device is available"
        assert "--device cuda: " in error and reason in error
    (tmp_path / "file").write_text("")
    assert main(["demo", "--out", str(tmp_path / "file" / "out")]) == 2
    assert "cannot create the folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["demo", "--epochs", "0"])
    assert done.value.code == 2 and "--epochs: 0 must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--data", "mnist", "--root", "/nonexistent"], "--root '/nonexistent' has no train-images-idx3-ubyte"),
    (["--device", "cuda"], "--device cuda: "),
])
def test_demo_errors_are_one_line_without_traceback(tmp_path, args, message):
    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    done = subprocess.run([sys.executable, "-m", "translution_ext", "demo", *args, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("python -m translution_ext demo: error: " + message)
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


def test_check_deployment_catches_a_difference(monkeypatch):
    from translution_ext.demo import experiment as run

    model = models.build_model("cnn_xvolution", canvas=24, patch=4).eval()
    images = torch.rand(4, 1, 24, 24)
    assert run.check_deployment(model, images, torch.device("cpu"), 4)["equal"]
    real = run.reparameterize_model

    def broken(m):
        deployed = real(m)
        with torch.no_grad():
            deployed.head[2].bias.add_(1.0)
        return deployed

    monkeypatch.setattr(run, "reparameterize_model", broken)
    assert not run.check_deployment(model, images, torch.device("cpu"), 4)["equal"]


STUB_PYTHON3 = """#!/bin/sh
# python3 -m venv DIR: a venv whose pip does nothing and whose python records where it ran, and how.
mkdir -p "$3/bin"
printf '#!/bin/sh\\nexit 0\\n' > "$3/bin/pip"
printf '#!/bin/sh\\npwd > "%s/cwd"\\nprintf "%%s\\\\n" "$@" > "%s/args"\\n' "$3" "$3" > "$3/bin/python"
chmod +x "$3/bin/pip" "$3/bin/python"
"""


def run_demo_script(tmp_path, *args):
    """Runs scripts/demo.sh from tmp_path/caller with a stub python3; returns (cwd, argv) of the demo."""
    bin_dir, venv, caller = tmp_path / "bin", tmp_path / "venv", tmp_path / "caller"
    for d in (bin_dir, caller):
        d.mkdir(exist_ok=True)
    stub = bin_dir / "python3"
    stub.write_text(STUB_PYTHON3)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", VENV=str(venv))
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "demo.sh"), *args], cwd=caller, env=env, check=True)
    return (venv / "cwd").read_text().strip(), (venv / "args").read_text().splitlines()


def test_demo_script_runs_the_installed_package_outside_the_checkout(tmp_path):
    cwd, argv = run_demo_script(tmp_path, "--quick")
    # Not the checkout (whose ./translution_ext would shadow the installed package), nor the caller's folder.
    assert not os.path.exists(os.path.join(cwd, "translution_ext")) and cwd != str(tmp_path / "caller")
    assert argv[:5] == ["-m", "translution_ext", "demo", "--require-native", "--out"]
    assert argv[5] == str(tmp_path / "caller" / "translution_demo") and argv[6:] == ["--quick"]


def test_demo_script_keeps_paths_relative_to_the_caller(tmp_path):
    _, argv = run_demo_script(tmp_path, "--out", "mine", "--data", "mnist", "--root=digits", "--limit-test", "8")
    caller = tmp_path / "caller"
    assert argv[-7:] == ["--out", str(caller / "mine"), "--data", "mnist", f"--root={caller / 'digits'}",
                         "--limit-test", "8"]


def fake_runs(accuracies):
    return [dict(seed=i, acc_static=a, acc_dynamic=a / 2, acc_aligned=a / 4, seconds_per_epoch=1.0 + i,
                 final_loss=0.1, history=[]) for i, a in enumerate(accuracies)]


def test_several_seeds_give_mean_and_standard_deviation():
    from translution_ext.demo import report

    row = report.summarise("cnn_xvolution", "CNN", 53_610, {"XVolution": "native"}, fake_runs([0.99, 0.97, 0.98]))
    assert row["seeds"] == [0, 1, 2] and len(row["runs"]) == 3
    assert row["acc_static"] == pytest.approx(0.98) and row["acc_static_std"] == pytest.approx(0.01)
    assert row["seconds_per_epoch"] == pytest.approx(2.0)
    printed = report.table([row])
    assert "98.0 ± 1.0%" in printed and "49.0 ± 0.5%" in printed and "over seeds 0, 1, 2" in printed
    one = report.summarise("cnn_xvolution", "CNN", 53_610, {}, fake_runs([0.997]))
    assert one["acc_static_std"] == 0.0 and "99.7%" in report.table([one]) and "±" not in report.table([one])


def test_table_json_and_plot_name_each_column_the_same(monkeypatch):
    from translution_ext import _plotting
    from translution_ext.demo import report

    if _plotting.pyplot() is None:
        pytest.skip("matplotlib is not installed")
    rows = [report.summarise("cnn_xvolution", "CNN", 53_610, {}, fake_runs([0.997, 0.997]))]
    header = report.table(rows).splitlines()[0]
    figures = []
    monkeypatch.setattr(_plotting, "save", lambda fig, path: figures.append(fig))
    assert report.write_plot("unused.png", rows, "title") is None
    ax = figures[0].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for _, name in report.COLUMNS:
        assert name in header and name in legend
    assert "chance (10%)" in legend
    assert any(line.get_ydata()[0] == 10 for line in ax.get_lines())  # the chance line
    assert "99.7" in [t.get_text() for t in ax.texts]  # exact values, not rounded to 100
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cnn_xvolution\n53,610 parameters"]


def test_deployment_speed_reads_the_right_way_round():
    from translution_ext.demo import report

    assert report.speed_comparison(training_ms=479, deployed_ms=847) == "deployed is 1.8x slower than the training form"
    assert report.speed_comparison(training_ms=800, deployed_ms=400) == "deployed is 2.0x faster than the training form"
