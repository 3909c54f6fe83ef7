"""Deprecated: use :mod:`translution_ext.ops.translution_attention`."""
from ._deprecated import warn_moved
from .ops.translution_attention import translution_attention  # noqa: F401

warn_moved("fused_attention", "translution_ext.ops.translution_attention")
