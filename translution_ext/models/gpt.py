"""Causal language model with Translution token mixers (spec §5)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._checks import check_number, check_positive_int, check_tensor
from ..nn import Attention
from .blocks import check_tln_num, make_mixer, stack_blocks
from .configs import config


class GPT(nn.Module):
    """Token embedding, causal pre-norm blocks, two final LayerNorms (trunk, head), LM head.

    Args:
        vocab_size: tokens.
        seq_len: the longest sequence (the causal tables have seq_len rows);
            shorter inputs use the same rows.
        dim, depth, heads, mlp_dim, dim_head: sizes.
        mixer, relative, dim_relenc, alpha, backend: as for :class:`ViT`.
        tln_num: hybrid: the first ``tln_num`` blocks use ``mixer``, the rest
            causal ordinary attention.
        pos_embedding: add a learned absolute position embedding.
    """

    def __init__(self, *, vocab_size: int, seq_len: int, dim: int, depth: int, heads: int, mlp_dim: int,
                 dim_head: int = 64, dropout: float = 0.0, emb_dropout: float = 0.0,
                 mixer: str = "translution", relative: str = "qkv", dim_relenc: int = 16,
                 alpha: float = 0.5, tln_num: Optional[int] = None, pos_embedding: bool = False,
                 backend: str = "auto"):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("seq_len", seq_len), ("dim", dim), ("depth", depth),
                            ("heads", heads), ("mlp_dim", mlp_dim), ("dim_head", dim_head)):
            check_positive_int(name, value)
        for name, value in (("dropout", dropout), ("emb_dropout", emb_dropout)):
            check_number(name, value, 0.0, 1.0, high_inclusive=False)
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(seq_len, dim) if pos_embedding else None
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.tln_num = check_tln_num(tln_num, depth)
        self.blocks = stack_blocks(
            depth, self.tln_num,
            lambda: make_mixer(mixer, dim=dim, heads=heads, dim_head=dim_head, dropout=dropout, layout="causal",
                               size=seq_len, relative=relative, dim_relenc=dim_relenc, alpha=alpha,
                               backend=backend),
            lambda: Attention(dim, heads, dim_head, dropout, causal=True),
            dim, mlp_dim, dropout)
        self.norm = nn.LayerNorm(dim)
        self.head_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)

    def _check_token_ids(self, tokens: torch.Tensor) -> None:
        """Ids must be rows of the embedding: on CUDA an out-of-range id is a device-side assert, not an error."""
        weight = self.token_embed.weight
        if tokens.device != weight.device:
            raise ValueError(f"tokens must be on the device of the GPT's parameters ({weight.device}), "
                             f"got {tokens.device}")
        # The range check reads the ids back (a device sync); a compiled graph leaves it out.
        if tokens.numel() == 0 or torch.compiler.is_compiling():
            return
        lo, hi = (int(v) for v in torch.aminmax(tokens))
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"tokens must be ids in [0, vocab_size) = [0, {self.vocab_size}), got min {lo} "
                             f"and max {hi}")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N) int64 token ids, N <= seq_len -> (B, N, vocab_size) logits."""
        if check_tensor("tokens", tokens).dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be a (B, N) int64 tensor, got shape {tuple(tokens.shape)}, "
                             f"dtype {tokens.dtype}")
        if tokens.shape[1] > self.seq_len:
            raise ValueError(f"tokens.size(1) must be <= seq_len = {self.seq_len}, got {tokens.shape[1]}")
        self._check_token_ids(tokens)
        x = self.token_embed(tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(tokens.shape[1], device=tokens.device))
        x = self.emb_dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.head_norm(self.norm(x)))


def create_gpt(name: str, *, vocab_size: int, seq_len: int, **kwargs) -> GPT:
    """A GPT of a named size ("tiny", "mini", "small", "base", "large"); kwargs override any argument."""
    return GPT(vocab_size=vocab_size, seq_len=seq_len, **{**config(name), **kwargs})
