"""Initialising a model built on the meta device (the way FSDP2 builds models larger than one device)."""
from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module) -> nn.Module:
    """Initialises every parameter and buffer of ``model`` in place, as the constructors do.

    Calls ``reset_parameters()`` of every submodule, children before parents.  For a model
    built under ``torch.device("meta")`` and materialised with ``model.to_empty(device=...)``
    (before or after ``fully_shard``), whose memory is uninitialised: the Translution index
    maps and the RoPE tables are non-persistent buffers that no checkpoint restores.

    Raises TypeError, before changing anything, when a submodule holds parameters or buffers
    but has no ``reset_parameters()`` (its values could not be restored).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    modules = list(model.modules())[::-1]  # the reverse of pre-order: every child before its parent
    for module in modules:
        owns = any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
        if owns and not callable(getattr(module, "reset_parameters", None)):
            raise TypeError(f"init_weights: {type(module).__name__} has parameters or buffers but no "
                            "reset_parameters(); build this model on a real device instead of the meta device")
    for module in modules:
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
    return model
