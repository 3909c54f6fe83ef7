"""translution_ext: Translution, ACmix and X-volution as accelerated PyTorch ops.

``translution_ext.ops`` holds the operators (native CPU/CUDA kernels with a
pure-PyTorch fallback); ``translution_ext.indexing`` builds the offset index
maps of the Translution layouts; ``translution_ext.nn`` has the attention
blocks, ``translution_ext.models`` the ViT and GPT models and
``translution_ext.compat`` loads weights trained with the authors' code.
"""
from ._native import build_info, has_native
import importlib

from . import indexing, ops
from . import nn, models, compat
from .reparameterize import reparameterize_model
from .indexing import RelativeIndex
from .ops import relative_offset_projection, translution_attention

# Old module paths, importable for one release with a DeprecationWarning.
_DEPRECATED_MODULES = ("acmix_ops", "fused_attention", "reference", "xvolution_ops")


def __getattr__(name: str):
    if name in _DEPRECATED_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RelativeIndex",
    "build_info",
    "compat",
    "has_native",
    "indexing",
    "models",
    "nn",
    "ops",
    "relative_offset_projection",
    "reparameterize_model",
    "translution_attention",
]
__version__ = "0.1.0"
