"""translution_ext: Translution, ACmix and X-volution as accelerated PyTorch ops.

``translution_ext.ops`` holds the operators (native CPU/CUDA kernels with a
pure-PyTorch fallback); ``translution_ext.indexing`` builds the offset index
maps of the Translution layouts; ``translution_ext.nn`` has the attention
blocks, ``translution_ext.models`` the ViT and GPT models and
``translution_ext.compat`` loads weights trained with the authors' code.
"""
from ._native import build_info, has_native
from . import indexing, ops, reference
from . import nn, models, compat, xvolution_ops, acmix_ops
from .reparameterize import reparameterize_model
from .indexing import RelativeIndex
from .ops import relative_offset_projection, translution_attention

__all__ = [
    "RelativeIndex",
    "acmix_ops",
    "build_info",
    "compat",
    "has_native",
    "indexing",
    "models",
    "nn",
    "ops",
    "reference",
    "relative_offset_projection",
    "reparameterize_model",
    "translution_attention",
    "xvolution_ops",
]
__version__ = "0.1.0"
