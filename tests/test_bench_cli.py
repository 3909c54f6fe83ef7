"""python -m translution_ext bench: every op and implementation measures, the FLOPs formulas, the CLI."""
import dataclasses
import json

import pytest
import torch

import translution_ext

from translution_ext.__main__ import main
from translution_ext.profiler import cases, cli
from translution_ext.profiler.baselines import reference_translution

TINY = dict(batch=2, dim=8, heads=2, repeat=1)


# The kernel each implementation's timed step must run (the native ops where the library is loaded).
NATIVE = translution_ext.has_native()
MEASURED_OP = {
    ("relproj", "ours"): "translution_ext::relative_offset_projection_grad_weight" if NATIVE else "aten::einsum",
    ("translution", "ours"): "translution_ext::translution_attention_backward" if NATIVE else "aten::einsum",
    ("acmix", "ours"): "translution_ext::acmix_window_attention_backward" if NATIVE else "aten::im2col",
    ("xvolution", "ours"): "translution_ext::xvolution_deployed" if NATIVE else "aten::convolution",
    ("xvolution", "training"): "translution_ext::pixel_shift_products" if NATIVE else "aten::convolution",
    ("relproj", "reference"): "aten::einsum", ("translution", "reference"): "aten::einsum",
    ("acmix", "reference"): "aten::im2col",
    **{(op, "gemm"): "aten::mm" for op in ("relproj", "translution", "acmix")},
    **{(op, "sdpa"): "aten::scaled_dot_product_attention" for op in ("relproj", "translution", "acmix")},
    **{("xvolution", impl): "aten::convolution" for impl in ("same_macs_conv", "wide_conv", "conv")},
}


@pytest.mark.parametrize("op,impl", [(op, impl) for op, (_, impls) in cases.OPS.items() for impl in impls])
def test_every_implementation_measures_its_op(op, impl, monkeypatch):
    """The timed step runs the implementation's op, and the reported numbers are the timer's:
    seconds = time x scale, gflops = FLOPs / seconds (the clock replaced by a fixed 0.25 s)."""
    ran = []

    def fake_timed(fn, device, repeat):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
        ran.extend(e.name for e in prof.events())
        return 0.25

    monkeypatch.setattr(cli, "timed", fake_timed)
    length = 6 if op in ("acmix", "xvolution") else 5
    setting = cases.Setting(op=op, impl=impl, length=length, window=3, **TINY)
    r = cli.measure(setting)
    assert MEASURED_OP[op, impl] in ran
    work = cases.OPS[op][0](setting)
    assert r["seconds"] == pytest.approx(0.25 * work.scale)
    assert r["gflops"] == pytest.approx(work.flops / r["seconds"] / 1e9)
    assert r["tokens"] == (36 if op in ("acmix", "xvolution") else 5) and r["impl"] == impl and r["op"] == op
    assert isinstance(r["peak_mb"], float)


@pytest.mark.parametrize("layout,length,tokens", [("1d", 7, 7), ("causal", 7, 7), ("2d_cls", 3, 10)])
def test_translution_flops_formula_and_layouts(layout, length, tokens):
    s = cases.Setting(op="translution", impl="ours", length=length, layout=layout, **TINY)
    assert cases.tokens(s) == tokens
    b, n, c = 2, tokens, 8
    assert cases.translution(s).flops == 3 * (2 * b * n * n * (3 * c * c + 2 * c))
    kv = dataclasses.replace(s, relative="kv")
    assert cases.translution(kv).flops == 3 * (2 * b * n * n * (2 * c * c + 2 * c) + 2 * b * n * c * c)


def test_relproj_flops_and_gemm_matches_them():
    s = cases.Setting(op="relproj", impl="gemm", length=6, **TINY)
    work = cases.relproj(s)
    assert work.flops == 3 * 2 * 2 * 36 * 8 * 8
    assert work.scale == 1.0  # small enough to time whole


def test_gemm_is_timed_smaller_and_scaled(monkeypatch):
    monkeypatch.setattr(cases, "GEMM_BYTES", 4096)
    work = cases.relproj(cases.Setting(op="relproj", impl="gemm", length=64, **TINY))
    assert work.scale > 1 and work.notes["timed_rows"] * work.scale == pytest.approx(work.notes["full_rows"])


@pytest.mark.parametrize("layout", ["1d", "causal", "2d_cls"])
def test_reference_translution_matches_the_block(layout):
    from translution_ext.nn import Translution

    torch.manual_seed(0)
    where = dict(grid=(3, 3)) if layout == "2d_cls" else dict(max_len=7)
    block = Translution(8, 2, 4, layout=layout, backend="reference", **where).double()
    x = torch.randn(2, block.layout.max_tokens, 8, dtype=torch.float64)
    full = block(x)
    torch.testing.assert_close(reference_translution(block, x, 4), full[:, :4])


def test_reference_rows_are_capped_and_scaled():
    s = cases.Setting(op="translution", impl="reference", length=32, reference_gb=1e-4, **TINY)
    work = cases.translution(s)
    assert work.notes["timed_rows"] < 32 and work.scale == pytest.approx(32 / work.notes["timed_rows"])


def test_cli_table_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    status = main(["bench", "translution", "--lengths", "4", "6", "--batch", "1", "--dim", "8", "--heads", "2",
                   "--repeat", "1", "--json", str(out), "--plot", str(png)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "than reference" in printed and "of the gemm roofline" in printed and "SDPA" in printed
    result = json.loads(out.read_text())
    assert result["meta"]["op"] == "translution" and "2·B·N²·C·D" in result["meta"]["flops"]
    got = {(r["length"], r["impl"]) for r in result["results"] if "seconds" in r}
    assert got == {(n, i) for n in (4, 6) for i in ("ours", "reference", "gemm", "sdpa")}
    for r in result["results"]:  # the JSON's schema: every measured row has its numbers
        assert {"op", "impl", "length", "tokens", "seconds", "gflops", "peak_mb"} <= set(r), r
        assert all(isinstance(r[k], float) for k in ("seconds", "gflops", "peak_mb"))
        assert r["op"] == "translution" and r["tokens"] == r["length"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_reports_a_failed_worker(capsys):
    # acmix needs H, W > window // 2: a failing worker is reported, and the exit status says so.
    status = main(["bench", "acmix", "--lengths", "2", "--impls", "ours", "--batch", "1", "--dim", "8",
                   "--heads", "2", "--repeat", "1"])
    assert status == 1
    assert "failed:" in capsys.readouterr().out


def test_cli_argument_errors(capsys):
    assert main(["bench", "relproj", "--impls", "ours", "nope"]) == 2
    assert capsys.readouterr().err == ("python -m translution_ext bench: error: --impls: relproj has no nope; "
                                       "choose from ours, reference, gemm, sdpa\n")
    with pytest.raises(SystemExit) as done:
        main(["bench", "relproj", "--lengths", "0"])
    assert done.value.code == 2 and "0 must be at least 1" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is available")
def test_cuda_request_without_cuda_is_one_line_without_traceback():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "translution_ext", "bench", "relproj", "--device", "cuda"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("python -m translution_ext bench: error: --device cuda: ")
    assert ("CPU-only build" in done.stderr) == (torch.version.cuda is None)


def measured(impl, seconds, peak_mb, tokens=128, **notes):
    return dict(op="translution", impl=impl, length=tokens, tokens=tokens, seconds=seconds, gflops=1.0,
                peak_mb=peak_mb, **notes)


def test_summary_gives_no_memory_ratio_for_a_partial_reference():
    ours = measured("ours", 1.0, 100.0)
    whole = cli.summary("translution", {"ours": ours, "reference": measured("reference", 5.0, 950.0)})
    assert "5.0x faster than reference, 9.5x less peak memory" in whole
    partial = cli.summary("translution", {"ours": ours, "reference": measured("reference", 5.0, 950.0,
                                                                              timed_rows=32, full_rows=128)})
    assert "less peak memory" not in partial and "more peak memory" not in partial
    assert "5.0x faster than reference (time extrapolated from 32 of 128 rows)" in partial
    assert "peak memory not measured at full size (it ran on 32 of 128 rows)" in partial


def test_plot_marks_partial_and_failed_points(monkeypatch):
    from translution_ext import _plotting

    if _plotting.pyplot() is None:
        pytest.skip("matplotlib is not installed")
    figures = []
    monkeypatch.setattr(_plotting, "save", lambda fig, path: figures.append(fig))
    results = [measured("ours", 1.0, 100.0, 64), measured("ours", 2.0, 150.0),
               measured("reference", 5.0, 950.0, 64), measured("reference", 20.0, 900.0, timed_rows=32, full_rows=128),
               dict(op="translution", impl="sdpa", length=128, tokens=128, error="out of memory")]
    assert cli.write_plot("unused.png", "translution", results, "title") is None
    fig = figures[0]
    memory = fig.axes[1]
    assert "32/128 rows" in [t.get_text() for t in memory.texts]
    hollow = [line for line in memory.get_lines() if line.get_markerfacecolor() == "white"]
    assert [(list(line.get_xdata()), list(line.get_ydata())) for line in hollow] == [([128], [900.0])]
    footnote = fig._supxlabel.get_text()
    assert "hollow: measured on the first rows only" in footnote and "failed, not drawn: sdpa at 128 tokens" in footnote


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--help"])
    assert done.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "(default: 4.0)" in printed and "(default: 192)" in printed and "(default: cpu)" in printed
