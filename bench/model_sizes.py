"""Parameters and training-state memory of the named ViT and GPT sizes, per token mixer.

Builds every model on the meta device (no memory is allocated, nothing is computed) and counts
its parameters.  Memory is what fp32 training with Adam keeps per parameter: the weight, its
gradient and Adam's two moments, 16 bytes; activations come on top and grow with the batch.

    python bench/model_sizes.py                                      # the README table (markdown)
    python bench/model_sizes.py --json bench/results/model_sizes.json  # also every count
"""
from __future__ import annotations

import argparse
import json
from typing import Callable, Dict, List

import torch

from translution_ext.models import CONFIGS, create_gpt, create_vit

BYTES_PER_PARAM = 4 + 4 + 8  # fp32 weight, gradient, Adam's exp_avg and exp_avg_sq
# (column name, create_* keyword arguments)
MIXERS = (("attention", dict(mixer="attention")),
          ("Translution, relative q, k, v", dict(mixer="translution", relative="qkv")),
          ("Translution, relative k, v", dict(mixer="translution", relative="kv")),
          ("α-Translution", dict(mixer="alpha")))
VIT = dict(image_size=224, patch_size=16, num_classes=1000)
GPT = dict(vocab_size=50257, seq_len=256)


def count(build: Callable[[], torch.nn.Module]) -> Dict[str, int]:
    """Parameters of the model ``build()`` makes on the meta device, in all and in its largest block."""
    with torch.device("meta"):
        model = build()
    largest = max(sum(p.numel() for p in block.parameters()) for block in model.blocks)
    return dict(params=sum(p.numel() for p in model.parameters()), largest_block=largest)


def measure() -> List[dict]:
    """One entry per (model, size, mixer)."""
    rows = []
    for size in CONFIGS:
        for model, create, where in (("ViT", create_vit, VIT), ("GPT", create_gpt, GPT)):
            for mixer, kwargs in MIXERS:
                counts = count(lambda: create(size, **where, **kwargs))
                rows.append(dict(model=model, size=size, mixer=mixer, **counts,
                                 train_bytes=BYTES_PER_PARAM * counts["params"]))
    return rows


def _amount(n: float) -> str:
    """3 significant digits with k / M / B."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))


def _bytes(n: float) -> str:
    """MB below 1 GB, then GB, then TB."""
    if n < 1e9:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e9:.3g} GB" if n < 1e12 else f"{n / 1e12:.3g} TB"


def markdown(rows: List[dict]) -> str:
    """A table: one line per model and size, one column per mixer, each cell parameters / memory."""
    names = [name for name, _ in MIXERS]
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for model in ("ViT", "GPT"):
        for size in CONFIGS:
            cells = {r["mixer"]: r for r in rows if r["model"] == model and r["size"] == size}
            lines.append(f"| {model}-{size} | " + " | ".join(
                f"{_amount(cells[n]['params'])} · {_bytes(cells[n]['train_bytes'])}" for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="also write every count here")
    args = parser.parse_args()
    rows = measure()
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(vit=VIT, gpt=GPT, bytes_per_param=BYTES_PER_PARAM, results=rows), f, indent=2,
                      ensure_ascii=False)


if __name__ == "__main__":
    main()
