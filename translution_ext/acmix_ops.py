"""Deprecated: use :mod:`translution_ext.ops.acmix_window_attention`."""
from ._deprecated import warn_moved
from .ops.acmix_window_attention import acmix_window_attention  # noqa: F401

warn_moved("acmix_ops", "translution_ext.ops.acmix_window_attention")
