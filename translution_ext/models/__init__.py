"""ViT and GPT models with Translution, α-Translution or attention token mixers."""
from .blocks import MIXERS, Block, FeedForward
from .configs import CONFIGS, config
from .gpt import GPT, create_gpt
from .init import init_weights
from .vit import ViT, create_vit

__all__ = ["Block", "CONFIGS", "FeedForward", "GPT", "MIXERS", "ViT", "config", "create_gpt", "create_vit",
           "init_weights"]
