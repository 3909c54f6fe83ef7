"""Pure-PyTorch references of the operators.

Two forms of the relative-offset projection:

* :func:`relative_offset_projection_gathered` follows the definition (and the
  authors' code) literally: it gathers an (Nq, Nk, C, D) weight tensor.  Only
  for tests on small shapes and as the benchmark's "reference approach".
* :func:`relative_offset_projection_by_class` projects every token with every
  table row, (B, N, R, D), then picks the row each pair needs.  It never builds
  the gathered weights; it is the fallback when the native kernels cannot run.
"""
from __future__ import annotations

import torch


def _source_positions(index: torch.Tensor, side: str) -> torch.Tensor:
    """(Nq, Nk) int64: the token of x that pair (i, j) reads (j for key, i for query)."""
    nq, nk = index.shape
    if side == "key":
        return torch.arange(nk, device=index.device).expand(nq, nk)
    return torch.arange(nq, device=index.device)[:, None].expand(nq, nk)


def relative_offset_projection_gathered(
    x: torch.Tensor, weight: torch.Tensor, index: torch.Tensor, side: str = "key"
) -> torch.Tensor:
    """out[b, i, j] = x[b, src(i, j)] @ weight[index[i, j]], via gathered weights.

    x: (B, N, C), weight: (R, C, D), index: (Nq, Nk) -> (B, Nq, Nk, D).
    Memory O(Nq·Nk·C·D): small shapes only.
    """
    w = weight[index.long()]  # (Nq, Nk, C, D)
    if side == "key":
        return torch.einsum("bjc,ijcd->bijd", x, w)
    return torch.einsum("bic,ijcd->bijd", x, w)


def relative_offset_projection_by_class(
    x: torch.Tensor, weight: torch.Tensor, index: torch.Tensor, side: str = "key"
) -> torch.Tensor:
    """Same result as the gathered form with memory O(B·N·R·D).

    x: (B, N, C), weight: (R, C, D), index: (Nq, Nk) -> (B, Nq, Nk, D).
    """
    projected = torch.einsum("bnc,rcd->bnrd", x, weight)  # every token x every table row
    return projected[:, _source_positions(index, side), index.long()]
