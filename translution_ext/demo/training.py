"""Training and evaluation loops of the demo (AdamW, cosine schedule, fixed seeds)."""
from __future__ import annotations

import math
import time
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..profiler.measure import timed
from .progress import Progress


def batches(n: int, batch_size: int, generator: torch.Generator = None) -> List[torch.Tensor]:
    """Index batches of range(n): shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def train(model: nn.Module, data: Tuple[torch.Tensor, torch.Tensor], *, epochs: int, batch_size: int, lr: float,
          seed: int, device: torch.device, label: str) -> List[Dict[str, float]]:
    """Trains in place; returns per-epoch {"loss", "seconds"}.

    data: images (N, 1, S, S) and labels (N,), on the CPU; batches go to ``device``.
    """
    images, labels = data
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(labels) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    shuffle = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        model.train()
        start, total, seen = time.perf_counter(), 0.0, 0
        order = batches(len(labels), batch_size, shuffle)
        with Progress(f"  {label:16} epoch {epoch + 1}/{epochs}", len(order)) as bar:
            for idx in order:
                x, y = images[idx].to(device), labels[idx].to(device)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
                total += loss.item() * len(idx)
                seen += len(idx)
                bar.update(1, loss=total / seen)
        history.append(dict(loss=total / seen, seconds=time.perf_counter() - start))
    return history


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Logits (N, classes) in eval mode, computed batch by batch, on the CPU."""
    model.eval()
    return torch.cat([model(images[idx].to(device)).float().cpu() for idx in batches(len(images), batch_size)])


def accuracy(model: nn.Module, data: Tuple[torch.Tensor, torch.Tensor], batch_size: int,
             device: torch.device) -> float:
    """Top-1 accuracy in [0, 1] on images (N, 1, S, S) and labels (N,)."""
    images, labels = data
    return (predict(model, images, batch_size, device).argmax(1) == labels).float().mean().item()


@torch.no_grad()
def latency_ms(model: nn.Module, x: torch.Tensor, repeat: int = 5) -> float:
    """Best eval-mode forward time of one batch ``x``, in milliseconds."""
    model.eval()
    return 1e3 * timed(lambda: model(x), x.device.type, repeat)
