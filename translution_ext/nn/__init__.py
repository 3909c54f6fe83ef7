"""Modules: Translution, α-Translution and the ordinary attention of hybrid models."""
from .alpha_translution import AlphaTranslution
from .attention import Attention, RotaryEmbedding2D
from .functional import BACKENDS
from .layout import LAYOUTS, TokenLayout
from .relative_block import VARIANTS
from .translution import Translution

__all__ = [
    "AlphaTranslution",
    "Attention",
    "BACKENDS",
    "LAYOUTS",
    "RotaryEmbedding2D",
    "TokenLayout",
    "Translution",
    "VARIANTS",
]
