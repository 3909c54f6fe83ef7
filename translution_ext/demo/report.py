"""The demo's outputs: a results table on stdout, a JSON file and a PNG plot."""
from __future__ import annotations

import json
import statistics
from typing import Dict, List, Optional

from .. import _plotting

# One name per accuracy column, used by the table, the JSON and the plot: (result key, name).
COLUMNS = (("acc_static", "static → static"), ("acc_dynamic", "static → dynamic"),
           ("acc_aligned", "static → whole-patch moves"))
# The test set (a DynamicMNIST field) behind each column.
TEST_SETS = (("acc_static", "test_static"), ("acc_dynamic", "test_dynamic"), ("acc_aligned", "test_aligned"))
CHANCE = 0.1  # ten digit classes


def summarise(model: str, description: str, params: int, kernels: Dict[str, str], runs: List[dict]) -> dict:
    """One model's row: the mean and standard deviation over seeds of each accuracy and of the
    time per epoch, and every seed's own result under ``runs``."""
    row = dict(model=model, description=description, params=params, kernels=kernels,
               seeds=[r["seed"] for r in runs])
    for key in [k for k, _ in COLUMNS] + ["seconds_per_epoch"]:
        values = [r[key] for r in runs]
        row[key] = statistics.fmean(values)
        row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    row["runs"] = runs
    return row


def _accuracy(row: dict, key: str) -> str:
    spread = f" ± {100 * row[key + '_std']:.1f}" if len(row["seeds"]) > 1 else ""
    return f"{100 * row[key]:.1f}{spread}%"


def kernel_summary(kernels: Dict[str, str]) -> str:
    """{"Translution": "fused"} -> "Translution: fused"."""
    return ", ".join(f"{mixer}: {how}" for mixer, how in kernels.items()) or "-"


def table(rows: List[dict]) -> str:
    """Test accuracy per column (mean ± standard deviation over seeds when there are several),
    parameters, time per epoch and the kernels that ran, one line per model."""
    head = ["model"] + [name for _, name in COLUMNS] + ["params", "s/epoch", "kernels", "description"]
    cells = [[r["model"]] + [_accuracy(r, key) for key, _ in COLUMNS]
             + [f"{r['params']:,}", f"{r['seconds_per_epoch']:.1f}", kernel_summary(r["kernels"]), r["description"]]
             for r in rows]
    widths = [max(len(line[i]) for line in [head] + cells) for i in range(len(head))]
    left = {0, len(head) - 2, len(head) - 1}  # names and text left-aligned, numbers right-aligned

    def fmt(line: List[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()

    lines = [fmt(head), "-" * len(fmt(head))] + [fmt(c) for c in cells]
    if rows and len(rows[0]["seeds"]) > 1:
        lines.append(f"accuracy: mean ± standard deviation over seeds {', '.join(map(str, rows[0]['seeds']))}; "
                     f"chance is {100 * CHANCE:.0f}%")
    return "\n".join(lines)


def speed_comparison(training_ms: float, deployed_ms: float) -> str:
    """"deployed is 1.8x slower than the training form" (or faster)."""
    ratio = deployed_ms / training_ms
    if ratio >= 1:
        return f"deployed is {ratio:.1f}x slower than the training form"
    return f"deployed is {1 / ratio:.1f}x faster than the training form"


def deployment_summary(d: dict) -> str:
    """One paragraph on the X-volution model before and after re-parameterisation."""
    return (f"X-volution re-parameterised: max |deployed - trained| = {d['max_abs_diff']:.2e} "
            f"({d['relative_diff']:.1e} of the logit scale) -> {'equal' if d['equal'] else 'DIFFERENT'}\n"
            f"  training form: {d['training_params']:,} parameters, {d['training_bytes'] / 1024:.1f} KiB, "
            f"{d['training_latency_ms']:.2f} ms per batch of {d['latency_batch']}\n"
            f"  deployed form: {d['deployed_params']:,} parameters, {d['deployed_bytes'] / 1024:.1f} KiB, "
            f"{d['deployed_latency_ms']:.2f} ms per batch of {d['latency_batch']} "
            f"({speed_comparison(d['training_latency_ms'], d['deployed_latency_ms'])})")


def write_json(path: str, payload: dict) -> None:
    """Writes ``payload`` as indented JSON."""
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, ensure_ascii=False)


def write_plot(path: str, rows: List[dict], title: str) -> Optional[str]:
    """Grouped bars of every accuracy column per model, labelled with their values (error bars:
    standard deviation over seeds), a chance line and each model's parameter count; returns why
    not when matplotlib is missing."""
    plt = _plotting.pyplot()
    if plt is None:
        return _plotting.MISSING
    several = bool(rows) and len(rows[0]["seeds"]) > 1
    fig, ax = plt.subplots(figsize=(2.0 * len(rows) + 2, 4.6))
    width = 0.27
    for i, (key, name) in enumerate(COLUMNS):
        values = [100 * r[key] for r in rows]
        errors = [100 * r[key + "_std"] for r in rows] if several else None
        bars = ax.bar([x + width * (i - 1) for x in range(len(rows))], values, width=width, yerr=errors,
                      capsize=2, label=name)
        # Inside the bars, where the error bars do not cross them.
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], label_type="center", fontsize=7, color="white",
                     fontweight="bold")
    ax.axhline(100 * CHANCE, color="grey", linestyle="--", linewidth=1, label=f"chance ({100 * CHANCE:.0f}%)")
    ax.set_xticks(range(len(rows)), [f"{r['model']}\n{r['params']:,} parameters" for r in rows], fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 112)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, fontsize=8)
    _plotting.save(fig, path)
    return None
