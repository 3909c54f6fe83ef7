"""Model sizes of the reference code (spec §5): patch 16 on 224 for ViT, dim_head 64, mlp 4×dim."""
from __future__ import annotations

from typing import Dict

CONFIGS: Dict[str, Dict[str, int]] = {
    "tiny": dict(dim=192, depth=6, heads=3, mlp_dim=768),
    "mini": dict(dim=192, depth=12, heads=3, mlp_dim=768),
    "small": dict(dim=384, depth=12, heads=6, mlp_dim=1536),
    "base": dict(dim=768, depth=12, heads=12, mlp_dim=3072),
    "large": dict(dim=1024, depth=24, heads=16, mlp_dim=4096),
}


def config(name: str) -> Dict[str, int]:
    """A copy of the named size: dim, depth, heads, mlp_dim."""
    if name not in CONFIGS:
        raise ValueError(f"config must be one of {', '.join(map(repr, CONFIGS))}, got {name!r}")
    return dict(CONFIGS[name])
