"""Vision Transformer with Translution token mixers (spec §5)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .._checks import check_like_parameters, check_number, check_positive_int, check_size_pair, check_tensor
from ..nn import Attention
from .blocks import check_tln_num, make_mixer, stack_blocks
from .configs import config

HYBRID_ATTENTION = ("rope2d", "plain")


class ViT(nn.Module):
    """Patch embedding, class token, pre-norm blocks, final LayerNorm, linear head.

    Patch embedding: patches (p1 p2 c) -> LayerNorm -> Linear -> LayerNorm.
    No absolute position embedding unless ``pos_embedding=True``.

    Args:
        image_size, patch_size: int or (H, W); images may be smaller than
            ``image_size`` (any multiple of the patch size), using the same tables.
        num_classes, dim, depth, heads, mlp_dim, dim_head, channels: sizes.
        pool: "cls" (class token) or "mean" (all tokens).
        mixer: "translution", "alpha" (α-Translution) or "attention".
        relative: the relative roles of the Translution mixers ("qkv", "kv", ...).
        dim_relenc, alpha: α-Translution's e and α.
        tln_num: hybrid model: the first ``tln_num`` blocks use ``mixer``, the
            rest ordinary attention (``hybrid_attention``: "rope2d" with 2D RoPE,
            or "plain").  None: every block uses ``mixer``.
        backend: the Translution backend ("auto", "native", "reference").
    """

    def __init__(self, *, image_size, patch_size, num_classes: int, dim: int, depth: int, heads: int,
                 mlp_dim: int, dim_head: int = 64, channels: int = 3, pool: str = "cls",
                 dropout: float = 0.0, emb_dropout: float = 0.0, mixer: str = "translution",
                 relative: str = "qkv", dim_relenc: int = 16, alpha: float = 0.5,
                 tln_num: Optional[int] = None, hybrid_attention: str = "rope2d",
                 pos_embedding: bool = False, backend: str = "auto"):
        super().__init__()
        self.image_size = check_size_pair("image_size", image_size)
        self.patch_size = check_size_pair("patch_size", patch_size)
        for name, value in (("num_classes", num_classes), ("dim", dim), ("depth", depth), ("heads", heads),
                            ("mlp_dim", mlp_dim), ("dim_head", dim_head), ("channels", channels)):
            check_positive_int(name, value)
        for name, value in (("dropout", dropout), ("emb_dropout", emb_dropout)):
            check_number(name, value, 0.0, 1.0, high_inclusive=False)
        if any(s % p for s, p in zip(self.image_size, self.patch_size)):
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        if hybrid_attention not in HYBRID_ATTENTION:
            raise ValueError(f"hybrid_attention must be 'rope2d' or 'plain', got {hybrid_attention!r}")
        self.grid = tuple(s // p for s, p in zip(self.image_size, self.patch_size))
        self.channels, self.pool = channels, pool
        patch_dim = channels * self.patch_size[0] * self.patch_size[1]
        self.patch_embed = nn.Sequential(nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim))
        num_tokens = self.grid[0] * self.grid[1] + 1
        self.pos_embedding = nn.Parameter(torch.randn(1, num_tokens, dim)) if pos_embedding else None
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.tln_num = check_tln_num(tln_num, depth)
        rope = self.grid if hybrid_attention == "rope2d" else None
        self.blocks = stack_blocks(
            depth, self.tln_num,
            lambda: make_mixer(mixer, dim=dim, heads=heads, dim_head=dim_head, dropout=dropout, layout="2d_cls",
                               size=self.grid, relative=relative, dim_relenc=dim_relenc, alpha=alpha,
                               backend=backend),
            lambda: Attention(dim, heads, dim_head, dropout, rope_grid=rope, cls_token=True),
            dim, mlp_dim, dropout)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialises the class token and position embedding (this module's own parameters) as at construction."""
        nn.init.normal_(self.cls_token)
        if self.pos_embedding is not None:
            nn.init.normal_(self.pos_embedding)

    def patchify(self, img: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """(B, C, H, W) -> (B, h·w, p1·p2·C) patches in row-major order, and (h, w)."""
        if check_tensor("img", img).dim() != 4 or img.shape[1] != self.channels:
            raise ValueError(f"img must have shape (B, {self.channels}, H, W), got {tuple(img.shape)}")
        check_like_parameters("img", img, self.cls_token, "ViT")
        b, c, hh, ww = img.shape
        p1, p2 = self.patch_size
        if hh % p1 or ww % p2 or hh > self.image_size[0] or ww > self.image_size[1]:
            raise ValueError(f"img height and width must be multiples of the patch size {self.patch_size} "
                             f"and at most image_size {self.image_size}, got {(hh, ww)}")
        h, w = hh // p1, ww // p2
        patches = img.reshape(b, c, h, p1, w, p2).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, p1 * p2 * c)
        return patches, (h, w)

    def forward_features(self, img: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1 + h·w, dim) after the final LayerNorm."""
        patches, grid = self.patchify(img)
        x = self.patch_embed(patches)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embedding is not None:
            x = x + self.pos_embedding[:, : x.shape[1]]
        x = self.emb_dropout(x)
        for block in self.blocks:
            x = block(x, grid=grid)
        return self.norm(x)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes) logits."""
        x = self.forward_features(img)
        return self.head(x.mean(dim=1) if self.pool == "mean" else x[:, 0])


def create_vit(name: str, *, image_size=224, patch_size=16, num_classes: int = 1000, **kwargs) -> ViT:
    """A ViT of a named size ("tiny", "mini", "small", "base", "large"); kwargs override any argument."""
    return ViT(image_size=image_size, patch_size=patch_size, num_classes=num_classes, **{**config(name), **kwargs})
