"""A deployed X-volution model outside this package's native op: torch.export gives standard aten ops
only, ONNX Runtime gives PyTorch's outputs, and a saved state_dict loads into the plain-PyTorch
modules of translution_ext.export with no native library."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import translution_ext
from translution_ext.export import deployed_xvolution_reference, to_reference
from translution_ext.nn import XVolution

from test_xvolution_modules import randomize_bn_

# (in, out, kernel_size, stride, shift_lengths, pssa_kernel_size, extra_branches)
LAYERS = [(3, 8, 3, 1, (1,), 1, False), (8, 8, 3, 2, (1, 2), 3, True), (8, 6, 5, 1, (1,), 1, True)]


def small_cnn(deploy: bool = False) -> torch.nn.Sequential:
    layers = []
    for ci, co, k, s, lengths, ka, extra in LAYERS:
        layers += [XVolution(ci, co, k, s, lengths, ka, extra, deploy=deploy), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def deployed_cnn() -> torch.nn.Sequential:
    torch.manual_seed(0)
    net = small_cnn()
    randomize_bn_(net, torch.Generator().manual_seed(0))
    return translution_ext.reparameterize_model(net.eval())


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-12)


def test_torch_export_gives_standard_aten_ops():
    model, x = deployed_cnn(), torch.randn(2, 3, 11, 9)
    ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert targets and all(t.startswith("aten.") for t in targets), targets
    assert "aten.conv2d.default" in targets or "aten.convolution.default" in targets
    with torch.no_grad():
        assert rel_err(ep.module()(x), model(x)) <= 1e-6


def test_onnx_runtime_matches_pytorch(tmp_path):
    reason = ("ONNX export needs the [export] extra: pip install 'translution_ext[export]' "
              "(onnx, onnxruntime, onnxscript)")
    pytest.importorskip("onnx", reason=reason)
    ort = pytest.importorskip("onnxruntime", reason=reason)
    pytest.importorskip("onnxscript", reason=reason)
    model, x = deployed_cnn(), torch.randn(2, 3, 13, 10)
    path = str(tmp_path / "xvolution.onnx")
    torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"], dynamo=True)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = model(x)
    assert y.shape == tuple(expected.shape)
    assert rel_err(torch.from_numpy(y), expected) <= 1e-5


def test_to_reference_gives_the_same_outputs():
    model, x = deployed_cnn(), torch.randn(1, 3, 9, 12)
    plain = to_reference(model)
    assert not any(isinstance(m, XVolution) for m in plain.modules())
    with torch.no_grad():
        assert rel_err(plain(x), model(x)) <= 1e-5
    with pytest.raises(ValueError, match="to_reference needs a deployed model"):
        to_reference(small_cnn())


def test_saved_state_dict_runs_without_the_native_library(tmp_path):
    model, x = deployed_cnn(), torch.randn(2, 3, 10, 11)
    with torch.no_grad():
        expected = model(x)
    torch.save(model.state_dict(), tmp_path / "deployed.pt")
    torch.save({"x": x, "y": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import torch, translution_ext
        from translution_ext.export import deployed_xvolution_reference
        assert not translution_ext.has_native()
        layers = []
        for ci, co, k, s, lengths, ka, _ in {LAYERS!r}:
            layers += [deployed_xvolution_reference(ci, co, k, s, lengths, ka), torch.nn.ReLU()]
        plain = torch.nn.Sequential(*layers[:-1])
        plain.load_state_dict(torch.load({str(tmp_path / "deployed.pt")!r}))
        io = torch.load({str(tmp_path / "io.pt")!r})
        with torch.no_grad():
            y = plain(io["x"])
        err = (y - io["y"]).abs().max().item() / io["y"].abs().max().item()
        assert err <= 1e-5, err
        print("ok", err)
    """)
    env = dict(os.environ, TRANSLUTION_EXT_DISABLE_NATIVE="1")
    run = subprocess.run([sys.executable, "-W", "ignore::RuntimeWarning", "-c", script], env=env,
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(translution_ext.__file__)))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ok")
