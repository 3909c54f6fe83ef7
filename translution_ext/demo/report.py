"""The demo's outputs: a results table on stdout, a JSON file and a PNG plot."""
from __future__ import annotations

import json
from typing import List, Optional

from .. import _plotting


def table(rows: List[dict]) -> str:
    """Accuracy static->static, static->dynamic (any position and whole-patch moves), parameters and
    time per epoch, one line per model."""
    head = (f"{'model':16} {'static->static':>15} {'static->dynamic':>16} {'(patch-aligned)':>16} {'params':>10} "
            f"{'s/epoch':>8}  {'kernels':24} description")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:16} {100 * r['acc_static']:14.1f}% {100 * r['acc_dynamic']:15.1f}% "
                     f"{100 * r['acc_aligned']:15.1f}% "
                     f"{r['params']:>10,} {r['seconds_per_epoch']:8.1f}  {kernel_summary(r['kernels']):24} "
                     f"{r['description']}")
    return "\n".join(lines)


def kernel_summary(kernels: dict) -> str:
    """{"Translution": "fused"} -> "Translution: fused"."""
    return ", ".join(f"{mixer}: {how}" for mixer, how in kernels.items()) or "-"


def deployment_summary(d: dict) -> str:
    """One paragraph on the X-volution model before and after re-parameterisation."""
    return (f"X-volution re-parameterised: max |deployed - trained| = {d['max_abs_diff']:.2e} "
            f"({d['relative_diff']:.1e} of the logit scale) -> {'equal' if d['equal'] else 'DIFFERENT'}\n"
            f"  training form: {d['training_params']:,} parameters, {d['training_bytes'] / 1024:.1f} KiB, "
            f"{d['training_latency_ms']:.2f} ms per batch of {d['latency_batch']}\n"
            f"  deployed form: {d['deployed_params']:,} parameters, {d['deployed_bytes'] / 1024:.1f} KiB, "
            f"{d['deployed_latency_ms']:.2f} ms per batch of {d['latency_batch']} "
            f"(training / deployed time: {d['training_latency_ms'] / d['deployed_latency_ms']:.2f})")


def write_json(path: str, payload: dict) -> None:
    """Writes ``payload`` as indented JSON."""
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)


def write_plot(path: str, rows: List[dict], title: str) -> Optional[str]:
    """Grouped bars of static and dynamic accuracy per model; returns why not when matplotlib is missing."""
    plt = _plotting.pyplot()
    if plt is None:
        return _plotting.MISSING
    names = [r["model"] for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4))
    sets = (("acc_static", "static -> static"), ("acc_dynamic", "static -> dynamic"),
            ("acc_aligned", "static -> dynamic, whole-patch moves"))
    for i, (key, label) in enumerate(sets):
        values = [100 * r[key] for r in rows]
        bars = ax.bar([x + 0.27 * (i - 1) for x in xs], values, width=0.27, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(list(xs), names, rotation=15)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=8)
    _plotting.save(fig, path)
    return None
