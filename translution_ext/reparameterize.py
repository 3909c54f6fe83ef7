"""Whole-model re-parameterisation (timm convention: modules expose ``reparameterize()``)."""
from __future__ import annotations

import copy

from torch import nn


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Calls ``reparameterize()`` on every submodule that has one (children before parents).

    Args:
        model: in eval mode (BatchNorm folding uses running statistics).
        inplace: convert ``model`` itself instead of a deep copy.

    Returns:
        The converted model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    for module in list(model.modules())[::-1]:
        if hasattr(module, "reparameterize") and callable(module.reparameterize):
            module.reparameterize()
    return model
