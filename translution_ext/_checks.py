"""Argument checks shared by the public functions and modules: one rule, one wording.

Every check runs before any arithmetic on the argument and raises TypeError for a
value of the wrong kind (a float where an int is needed, a list where a tensor is)
and ValueError for a value of the right kind out of range.  ``op`` is the message
prefix of an op ("translution_attention: "); modules and models use none.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_int(value: Any) -> bool:
    """A Python int; bool is not one here (True would silently mean 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(name: str, value: Any, op: str = "") -> int:
    """``value`` if it is an int >= 1."""
    if not is_int(value):
        raise TypeError(f"{op}{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{op}{name} must be a positive int, got {value!r}")
    return value


def check_positive_odd_int(name: str, value: Any, op: str = "", why: str = "") -> int:
    """``value`` if it is an odd int >= 1; ``why`` is appended to the rule, e.g. " (the kernel has a centre)"."""
    message = f"{op}{name} must be a positive odd int{why}, got {value!r}"
    if not is_int(value):
        raise TypeError(message)
    if value < 1 or value % 2 == 0:
        raise ValueError(message)
    return value


def _pair_message(name: str, value: Any, what: str, op: str) -> str:
    return f"{op}{name} must be two positive ints{' ' + what if what else ''}, got {value!r}"


def check_pair(name: str, value: Any, what: str = "", op: str = "") -> Tuple[Any, Any]:
    """``tuple(value)`` if it is a sequence of two items (their values are the caller's to check)."""
    if isinstance(value, (str, bytes, torch.Tensor)) or not isinstance(value, Sequence):
        raise TypeError(_pair_message(name, value, what, op))
    if len(value) != 2:
        raise ValueError(_pair_message(name, value, what, op))
    return tuple(value)


def check_int_pair(name: str, value: Any, what: str = "", op: str = "") -> Tuple[int, int]:
    """``tuple(value)`` if it is a pair of positive ints; ``what`` names the pair, e.g. "(Hg, Wg)"."""
    value = check_pair(name, value, what, op)
    message = _pair_message(name, value, what, op)
    if not all(is_int(v) for v in value):
        raise TypeError(message)
    if not all(v >= 1 for v in value):
        raise ValueError(message)
    return value


def check_size_pair(name: str, value: Any, what: str = "(H, W)") -> Tuple[int, int]:
    """An int n as (n, n), or a pair of positive ints (image and patch sizes)."""
    if is_int(value):
        check_positive_int(name, value)
        return value, value
    message = f"{name} must be a positive int or two positive ints {what}, got {value!r}"
    try:
        return check_int_pair(name, value, what)
    except TypeError:
        raise TypeError(message) from None
    except ValueError:
        raise ValueError(message) from None


def check_number(name: str, value: Any, low: float, high: float, high_inclusive: bool, op: str = "") -> float:
    """``float(value)`` if it is a real number in [low, high) (or [low, high])."""
    message = f"{op}{name} must be in [{low:g}, {high:g}{']' if high_inclusive else ')'}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(message)
    if not (low <= value <= high if high_inclusive else low <= value < high):
        raise ValueError(message)
    return float(value)


def check_tensor(name: str, value: Any, op: str = "", ndim: Optional[int] = None, shape: str = "") -> torch.Tensor:
    """``value`` if it is a tensor (with ``ndim`` dimensions; ``shape`` names them, e.g. "(B, N, C)")."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{op}{name} must be a {ndim}-D tensor{' ' + shape if shape else ''}, "
                         f"got shape {tuple(value.shape)}")
    return value


def check_float_dtype(name: str, t: torch.Tensor, op: str = "") -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}{name} must have dtype float16, bfloat16, float32 or float64, got {t.dtype}")


def check_like_parameters(name: str, x: torch.Tensor, param: torch.Tensor, owner: str) -> None:
    """``x`` must be on the device of ``owner``'s parameters (``param`` is one) and have their
    floating-point dtype; under torch.autocast any floating-point dtype is accepted."""
    if x.device != param.device:
        raise ValueError(f"{name} must be on the device of the {owner}'s parameters ({param.device}), got {x.device}; "
                         f"move {name} or the {owner} with .to()")
    if x.dtype == param.dtype:
        return
    if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        return
    raise TypeError(f"{name} must have the dtype of the {owner}'s parameters ({param.dtype}), got {x.dtype}; "
                    f"cast {name} or the {owner} with .to()")


def check_tokens(x: Any, dim: int, param: torch.Tensor, owner: str) -> None:
    """The input of a token mixer: a floating-point (B, N, dim) tensor like ``owner``'s parameter ``param``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != dim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must have shape (B, N, dim={dim}), got {shape}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    check_like_parameters("x", x, param, owner)


def check_image(x: Any, channels: int, param: torch.Tensor, owner: str) -> None:
    """The input of a convolutional block: a (B, channels, H, W) tensor like ``owner``'s parameter ``param``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must have shape (B, {channels}, H, W), got {shape}")
    check_like_parameters("x", x, param, owner)
