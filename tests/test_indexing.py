"""Index maps against the spec's formulas, written here as plain loops."""
import pytest
import torch

from translution_ext import indexing


def loop_map(n, idx):
    return torch.tensor([[idx(a, m) for m in range(n)] for a in range(n)])


@pytest.mark.parametrize("max_len,length", [(1, 1), (5, 5), (7, 3)])
def test_1d(max_len, length):
    ix = indexing.offset_index_1d(max_len, length)
    expected = loop_map(length, lambda a, m: a - m + max_len - 1)
    assert ix.num_classes == 2 * max_len - 1
    assert torch.equal(ix.key, expected)
    assert torch.equal(ix.query, expected.t())  # q_ij uses idx(j, i)


@pytest.mark.parametrize("max_len,length", [(1, 1), (6, 6), (8, 5)])
def test_causal_1d(max_len, length):
    ix = indexing.offset_index_causal_1d(max_len, length)
    kv = loop_map(length, lambda a, m: max(0, a - m))
    q = loop_map(length, lambda a, m: min(0, a - m) + max_len - 1)
    assert ix.num_classes == max_len
    assert torch.equal(ix.key, kv)
    assert torch.equal(ix.query, q.t())
    for i in range(length):  # the spec's statement for unmasked pairs
        for j in range(i + 1):
            assert ix.query[i, j] == max_len - 1 - (i - j)
            assert ix.key[i, j] == i - j


def grid_idx(grid, w_size):
    hg, wg = grid

    def idx(a, m):
        ra, ca = divmod(a, w_size)
        rm, cm = divmod(m, w_size)
        return (ra - rm + hg - 1) * (2 * wg - 1) + (ca - cm + wg - 1)

    return idx


@pytest.mark.parametrize("grid,size", [((1, 1), None), ((3, 4), None), ((4, 4), (2, 3))])
def test_2d(grid, size):
    h, w = size or grid
    ix = indexing.offset_index_2d(grid, size)
    expected = loop_map(h * w, grid_idx(grid, w))
    assert ix.num_classes == (2 * grid[0] - 1) * (2 * grid[1] - 1)
    assert torch.equal(ix.key, expected)
    assert torch.equal(ix.query, expected.t())


@pytest.mark.parametrize("grid,size", [((2, 2), None), ((3, 4), (3, 2))])
def test_2d_cls(grid, size):
    h, w = size or grid
    ix = indexing.offset_index_2d_cls(grid, size)
    r = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
    patch = grid_idx(grid, w)

    def idx(a, m):
        if a == 0 and m == 0:
            return r - 3
        if a == 0:
            return r - 2
        if m == 0:
            return r - 1
        return patch(a - 1, m - 1)

    expected = loop_map(1 + h * w, idx)
    assert ix.num_classes == r
    assert torch.equal(ix.key, expected)
    assert torch.equal(ix.query, expected.t())


def test_smaller_input_uses_same_rows():
    full = indexing.offset_index_2d((4, 4))
    small = indexing.offset_index_2d((4, 4), (2, 2))
    # token (r, c) of the 2x2 grid is token r*4 + c of the full grid
    pos = torch.tensor([0, 1, 4, 5])
    assert torch.equal(small.key, full.key[pos][:, pos])
    full1 = indexing.offset_index_1d(9)
    assert torch.equal(indexing.offset_index_1d(9, 4).key, full1.key[:4, :4])


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: indexing.offset_index_1d(4, 5), r"length must be <= 4"),
        (lambda: indexing.offset_index_causal_1d(4, 0), r"length must be a positive int"),
        (lambda: indexing.offset_index_2d((3, 3), (4, 1)), r"size\[0\] must be <= 3"),
        (lambda: indexing.offset_index_2d_cls((3, 3), (1, 5)), r"size\[1\] must be <= 3"),
    ],
)
def test_size_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
