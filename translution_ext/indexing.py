"""Offset index maps of the Translution layouts (spec: translution.md §3).

Each builder returns a :class:`RelativeIndex` with two (N, N) int64 maps, ready
for :func:`translution_ext.ops.relative_offset_projection`:

* ``key[i, j]   = idx(i, j)`` — table row used by k_ij and v_ij (side="key"),
* ``query[i, j] = idx(j, i)`` — table row used by q_ij (side="query"; the spec's
  swapped order),

and ``num_classes`` (R), the number of rows of every table.  A block built for
a maximum size accepts any smaller input: pass the actual size and the same
table rows serve the same offsets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

from ._checks import check_int_pair, check_pair, check_positive_int

Device = Union[str, torch.device, None]


@dataclass(frozen=True)
class RelativeIndex:
    """Index maps for one layout and input size.

    Attributes:
        key: (N, N) int64, ``key[i, j] = idx(i, j)`` for the k and v tables.
        query: (N, N) int64, ``query[i, j] = idx_q(j, i)`` for the q table.
        num_classes: R, rows of each (R, C, D) table.
    """

    key: torch.Tensor
    query: torch.Tensor
    num_classes: int


def _check_size(name: str, value: int, maximum: int, bound: str) -> None:
    """``value`` a positive int <= ``maximum``, the argument ``bound`` of the same call."""
    check_positive_int(name, value)
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum} ({bound}, the size the tables cover), got {value}")


def num_classes_1d(max_len: int) -> int:
    """R = 2L − 1 for bidirectional 1D offsets."""
    return 2 * check_positive_int("max_len", max_len) - 1


def num_classes_2d(grid: Tuple[int, int], cls_token: bool = False) -> int:
    """R = (2Hg − 1)(2Wg − 1), plus 3 class-token rows when ``cls_token``."""
    hg, wg = check_int_pair("grid", grid, "(Hg, Wg)")
    return (2 * hg - 1) * (2 * wg - 1) + (3 if cls_token else 0)


def _sequence_length(max_len: int, length: Optional[int]) -> int:
    """N: ``length`` (default ``max_len``), checked against ``max_len``."""
    check_positive_int("max_len", max_len)
    n = max_len if length is None else length
    _check_size("length", n, max_len, "max_len")
    return n


def offset_index_1d(max_len: int, length: Optional[int] = None, device: Device = None) -> RelativeIndex:
    """Bidirectional 1D: idx(a, m) = a − m + L − 1, R = 2L − 1.

    Args:
        max_len: L, the longest sequence the tables cover.
        length: N <= L, the actual sequence length (default L).
    """
    n = _sequence_length(max_len, length)
    pos = torch.arange(n, device=device)
    key = pos[:, None] - pos[None, :] + max_len - 1
    return RelativeIndex(key=key, query=key.t().contiguous(), num_classes=num_classes_1d(max_len))


def offset_index_causal_1d(max_len: int, length: Optional[int] = None, device: Device = None) -> RelativeIndex:
    """Causal 1D (GPT), R = L.

    k, v: idx(a, m) = max(0, a − m); q: idx(a, m) = min(0, a − m) + L − 1.  For
    the unmasked pairs j <= i the q row is L − 1 − (i − j) and the k/v row i − j;
    masked pairs (j > i) get valid rows whose outputs the causal mask discards.
    """
    n = _sequence_length(max_len, length)
    pos = torch.arange(n, device=device)
    diff = pos[:, None] - pos[None, :]  # diff[i, j] = i - j
    key = diff.clamp(min=0)
    query = (-diff).clamp(max=0) + max_len - 1  # idx_q(j, i) = min(0, j - i) + L - 1
    return RelativeIndex(key=key, query=query, num_classes=max_len)


def _grid_key(grid: Tuple[int, int], size: Optional[Tuple[int, int]], device: Device) -> torch.Tensor:
    hg, wg = check_int_pair("grid", grid, "(Hg, Wg)")
    h, w = (hg, wg) if size is None else check_pair("size", size, "(h, w)")
    _check_size("size[0]", h, hg, "grid[0]")
    _check_size("size[1]", w, wg, "grid[1]")
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    dr = rows[:, None] - rows[None, :] + hg - 1
    dc = cols[:, None] - cols[None, :] + wg - 1
    return dr * (2 * wg - 1) + dc


def offset_index_2d(
    grid: Tuple[int, int], size: Optional[Tuple[int, int]] = None, device: Device = None
) -> RelativeIndex:
    """2D grid tokens (row-major), R = (2Hg − 1)(2Wg − 1).

    idx(a, m) = (row(a) − row(m) + Hg − 1)(2Wg − 1) + (col(a) − col(m) + Wg − 1).

    Args:
        grid: (Hg, Wg), the largest grid the tables cover.
        size: (h, w) <= grid, the actual grid (default ``grid``); N = h·w.
    """
    key = _grid_key(grid, size, device)
    return RelativeIndex(key=key, query=key.t().contiguous(), num_classes=num_classes_2d(grid))


def offset_index_2d_cls(
    grid: Tuple[int, int], size: Optional[Tuple[int, int]] = None, device: Device = None
) -> RelativeIndex:
    """2D grid with a class token at index 0, R = (2Hg − 1)(2Wg − 1) + 3.

    idx(0, 0) = R − 3, idx(0, m>0) = R − 2, idx(a>0, 0) = R − 1, and the 2D
    formula between patches.  N = 1 + h·w.
    """
    grid_key = _grid_key(grid, size, device)
    r = num_classes_2d(grid, cls_token=True)
    n = grid_key.shape[0] + 1
    key = torch.empty(n, n, dtype=torch.long, device=grid_key.device)
    key[1:, 1:] = grid_key
    key[0, 0] = r - 3
    key[0, 1:] = r - 2
    key[1:, 0] = r - 1
    return RelativeIndex(key=key, query=key.t().contiguous(), num_classes=r)
