"""Modules: Translution, α-Translution, the ordinary attention of hybrid models, ACmix, X-volution."""
from .acmix import ACmix
from .acmix_bottleneck import ACmixBottleneck
from .acmix_window import ACmixWindowAttention, shifted_window_mask
from .alpha_translution import AlphaTranslution
from .attention import Attention, RotaryEmbedding2D
from .functional import BACKENDS
from .layout import LAYOUTS, TokenLayout
from .relative_block import VARIANTS
from .translution import Translution
from .xvolution import XVolution
from .xvolution_sa import XVolutionSA

__all__ = [
    "ACmix",
    "ACmixBottleneck",
    "ACmixWindowAttention",
    "AlphaTranslution",
    "Attention",
    "BACKENDS",
    "LAYOUTS",
    "RotaryEmbedding2D",
    "TokenLayout",
    "Translution",
    "VARIANTS",
    "XVolution",
    "XVolutionSA",
    "shifted_window_mask",
]
