"""Deprecated: use :mod:`translution_ext.ops.pixel_shift_products` and :mod:`translution_ext.ops.xvolution_fold`."""
from ._deprecated import warn_moved
from .ops.pixel_shift_products import (DIRECTIONS, pixel_shift_products,  # noqa: F401
                                       pixel_shift_products_reference, shift_offsets)
from .ops.xvolution_fold import xvolution_fold, xvolution_fold_reference  # noqa: F401

warn_moved("xvolution_ops", "translution_ext.ops.pixel_shift_products / translution_ext.ops.xvolution_fold")
