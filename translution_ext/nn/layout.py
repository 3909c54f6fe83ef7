"""Token layouts of the Translution blocks: which offset table row every pair uses.

A layout is fixed at construction with its maximum size (``max_len`` for the 1D
layouts, ``grid=(Hg, Wg)`` for the 2D ones); that size sets R, the rows of every
table.  An input may be smaller: the same rows then serve the same offsets.
"""
from __future__ import annotations

from typing import Optional, Tuple

from .. import indexing
from .._checks import check_int_pair, check_positive_int

LAYOUTS = ("1d", "causal", "2d", "2d_cls")


class TokenLayout:
    """Offset indexing of one layout (spec: translution.md §3, "Offset indexing").

    Args:
        layout: "1d" (bidirectional sequence), "causal" (GPT), "2d" (row-major
            grid) or "2d_cls" (class token at index 0, then the grid).
        max_len: L, the longest sequence (1D layouts only).
        grid: (Hg, Wg), the largest grid (2D layouts only).
    """

    def __init__(self, layout: str, max_len: Optional[int] = None, grid: Optional[Tuple[int, int]] = None):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
        self.layout = layout
        self.is_2d = layout.startswith("2d")
        self.causal = layout == "causal"
        self.has_cls = layout == "2d_cls"
        if self.is_2d:
            if grid is None or max_len is not None:
                raise ValueError(f"layout {layout!r} needs grid=(Hg, Wg) and no max_len, got grid={grid!r}, "
                                 f"max_len={max_len!r}")
            grid = check_int_pair("grid", grid, "(Hg, Wg)")
            self.grid: Optional[Tuple[int, int]] = grid  # type: ignore[assignment]
            self.max_len: Optional[int] = None
            self.num_classes = indexing.num_classes_2d(grid, cls_token=self.has_cls)
        else:
            if max_len is None or grid is not None:
                raise ValueError(f"layout {layout!r} needs max_len and no grid, got max_len={max_len!r}, "
                                 f"grid={grid!r}")
            check_positive_int("max_len", max_len)
            self.grid = None
            self.max_len = max_len
            self.num_classes = max_len if self.causal else indexing.num_classes_1d(max_len)

    @property
    def max_tokens(self) -> int:
        """N of the largest input."""
        if self.is_2d:
            return self.grid[0] * self.grid[1] + int(self.has_cls)
        return self.max_len

    def describe(self) -> str:
        """The layout and its size, for repr and error messages."""
        size = f"grid={self.grid}" if self.is_2d else f"max_len={self.max_len}"
        return f"layout={self.layout!r}, {size}"

    def size_of(self, num_tokens: int, grid: Optional[Tuple[int, int]] = None) -> Tuple[int, ...]:
        """Validates the input size and returns it: (N,) for 1D, (h, w) for 2D.

        Raises ValueError naming ``x`` or ``grid`` when the input does not fit.
        """
        if not self.is_2d:
            if grid is not None:
                raise ValueError(f"grid is only for the 2D layouts; this block has layout {self.layout!r}")
            if num_tokens > self.max_len:
                raise ValueError(
                    f"x.size(1) must be <= max_len = {self.max_len} (the length this block was built for), "
                    f"got {num_tokens}"
                )
            return (num_tokens,)
        cls = int(self.has_cls)
        if grid is None:
            if num_tokens != self.max_tokens:
                raise ValueError(
                    f"x.size(1) = {num_tokens} does not match the full grid {self.grid} "
                    f"({self.max_tokens} tokens{' with the class token' if cls else ''}); "
                    "pass grid=(h, w) for a smaller grid"
                )
            return self.grid
        grid = check_int_pair("grid", grid, "(h, w)")
        if grid[0] > self.grid[0] or grid[1] > self.grid[1]:
            raise ValueError(f"grid must be <= {self.grid} (the grid this block was built for), got {grid}")
        if num_tokens != grid[0] * grid[1] + cls:
            raise ValueError(
                f"x.size(1) must be h*w{' + 1' if cls else ''} = {grid[0] * grid[1] + cls} for grid={grid}, "
                f"got {num_tokens}"
            )
        return grid

    def index(self, size: Tuple[int, ...], device=None) -> indexing.RelativeIndex:
        """The (N, N) key and query index maps for a validated ``size``."""
        if self.layout == "1d":
            return indexing.offset_index_1d(self.max_len, size[0], device=device)
        if self.layout == "causal":
            return indexing.offset_index_causal_1d(self.max_len, size[0], device=device)
        if self.layout == "2d":
            return indexing.offset_index_2d(self.grid, size, device=device)
        return indexing.offset_index_2d_cls(self.grid, size, device=device)
