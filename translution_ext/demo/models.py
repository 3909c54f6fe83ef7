"""The demo's five small models: three ViTs (attention + absolute positions, Translution,
α-Translution) and two CNNs (ACmix, X-volution), sized for a laptop CPU."""
from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import nn

from .. import _native
from ..models import ViT
from ..nn import ACmix, Attention, XVolution
from ..nn.functional import resolve_backend
from ..nn.relative_block import RelativeBlock

MODEL_NAMES = ("vit_attention", "vit_translution", "vit_alpha", "cnn_acmix", "cnn_xvolution")
DESCRIPTIONS = {
    "vit_attention": "ViT, self-attention + learned absolute position embedding",
    "vit_translution": "ViT, Translution (relative q, k, v)",
    "vit_alpha": "ViT, α-Translution",
    "cnn_acmix": "CNN, ACmix blocks",
    "cnn_xvolution": "CNN, X-volution blocks",
}
VIT_SIZE = dict(dim=64, depth=2, heads=2, dim_head=32, mlp_dim=128)
CNN_WIDTH = 32


def vit(mixer: str, canvas: int, patch: int, num_classes: int) -> ViT:
    """A 2-block ViT on a (canvas / patch)² grid with a class token, 1 input channel."""
    return ViT(image_size=canvas, patch_size=patch, num_classes=num_classes, channels=1, mixer=mixer,
               pos_embedding=mixer == "attention", **VIT_SIZE)


class SmallCNN(nn.Module):
    """Stem conv, then two mixer stages (the second halves the resolution), global average pool, linear head.

    ``mixer(in_channels, out_channels, stride)`` builds the stage's token mixer.
    forward: (B, 1, H, W) -> (B, num_classes).
    """

    def __init__(self, mixer: Callable[[int, int, int], nn.Module], num_classes: int, width: int = CNN_WIDTH):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = nn.Sequential(mixer(width, width, 1), nn.ReLU())
        self.stage2 = nn.Sequential(mixer(width, 2 * width, 2), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

    def forward(self, x):
        """x: (B, 1, H, W) -> (B, num_classes) logits."""
        return self.head(self.stage2(self.stage1(self.stem(x))))


def _acmix(cin: int, cout: int, stride: int) -> nn.Module:
    return nn.Sequential(ACmix(cin, cout, kernel_att=7, head=4, kernel_conv=3, stride=stride), nn.BatchNorm2d(cout))


def _xvolution(cin: int, cout: int, stride: int) -> nn.Module:
    return XVolution(cin, cout, kernel_size=3, stride=stride)  # carries its own BatchNorm


def build_model(name: str, canvas: int, patch: int, num_classes: int = 10) -> nn.Module:
    """One of MODEL_NAMES for (B, 1, canvas, canvas) images."""
    builders: Dict[str, Callable[[], nn.Module]] = {
        "vit_attention": lambda: vit("attention", canvas, patch, num_classes),
        "vit_translution": lambda: vit("translution", canvas, patch, num_classes),
        "vit_alpha": lambda: vit("alpha", canvas, patch, num_classes),
        "cnn_acmix": lambda: SmallCNN(_acmix, num_classes),
        "cnn_xvolution": lambda: SmallCNN(_xvolution, num_classes),
    }
    if name not in builders:
        raise ValueError(f"model must be one of {', '.join(MODEL_NAMES)}, got {name!r}")
    return builders[name]()


def kernels(model: nn.Module, device: torch.device) -> Dict[str, str]:
    """What computes the token mixing of ``model`` while it trains on ``device``.

    Maps each kind of mixer to "fused" or "native" (the compiled kernels of this package),
    "reference" (its pure-PyTorch fallback) or "torch" (plain PyTorch ops, no kernels of ours).
    """
    used: Dict[str, str] = {}
    for m in model.modules():
        if isinstance(m, RelativeBlock):
            used[type(m).__name__] = resolve_backend(m.backend, device, dropout_active=m.dropout > 0)
        elif isinstance(m, ACmix):
            used["ACmix"] = "native" if device.type in _native.ACMIX_DEVICE_TYPES else "reference"
        elif isinstance(m, XVolution):
            used["XVolution"] = "native" if device.type in _native.PIXEL_SHIFT_DEVICE_TYPES else "reference"
        elif isinstance(m, Attention):
            used["Attention"] = "torch"
    return used
