"""Operators of translution_ext: one module per native op, named like its C++ files.

Every module holds the op's public function, its pure-PyTorch reference, its fake
kernel (torch.compile) and its autograd registration.  Each op runs the native
kernel registered for the input's device when the compiled library provides one,
and the reference otherwise.

============================  ===============================================
op                            module
============================  ===============================================
relative_offset_projection    :mod:`.relative_offset_projection`
translution_attention         :mod:`.translution_attention`
acmix_window_attention        :mod:`.acmix_window_attention`
pixel_shift_products          :mod:`.pixel_shift_products`
xvolution_fold                :mod:`.xvolution_fold`
xvolution_deployed            :mod:`.xvolution_deployed`
============================  ===============================================
"""
from .acmix_window_attention import acmix_window_attention
from .pixel_shift_products import pixel_shift_products, shift_offsets
from .relative_offset_projection import relative_offset_projection
from .translution_attention import translution_attention
from .xvolution_deployed import xvolution_deployed
from .xvolution_fold import xvolution_fold

__all__ = [
    "acmix_window_attention",
    "pixel_shift_products",
    "relative_offset_projection",
    "shift_offsets",
    "translution_attention",
    "xvolution_deployed",
    "xvolution_fold",
]
