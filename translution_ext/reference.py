"""Deprecated: use :mod:`translution_ext.ops.relative_offset_projection`."""
from ._deprecated import warn_moved
from .ops.relative_offset_projection import (relative_offset_projection_by_class,  # noqa: F401
                                             relative_offset_projection_gathered)

warn_moved("reference", "translution_ext.ops.relative_offset_projection")
