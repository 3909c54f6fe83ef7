"""Index maps against the spec's formulas, written as plain loops in tests/translution_reference.py."""
import pytest
import torch

from translution_ext import indexing

import translution_reference as spec


def check(ix, layout, size, actual):
    """The package's maps equal the spec's loops (tests/translution_reference.py)."""
    r, key, query = spec.spec_rows(layout, size, actual)
    assert ix.num_classes == r
    assert torch.equal(ix.key, key)
    assert torch.equal(ix.query, query)  # q_ij uses idx(j, i)


@pytest.mark.parametrize("max_len,length", [(1, 1), (5, 5), (7, 3)])
def test_1d(max_len, length):
    check(indexing.offset_index_1d(max_len, length), "1d", max_len, length)
    assert indexing.offset_index_1d(max_len, length).num_classes == 2 * max_len - 1


@pytest.mark.parametrize("max_len,length", [(1, 1), (6, 6), (8, 5)])
def test_causal_1d(max_len, length):
    ix = indexing.offset_index_causal_1d(max_len, length)
    check(ix, "causal", max_len, length)
    for i in range(length):  # the spec's statement for unmasked pairs
        for j in range(i + 1):
            assert ix.query[i, j] == max_len - 1 - (i - j)
            assert ix.key[i, j] == i - j


@pytest.mark.parametrize("grid,size", [((1, 1), None), ((3, 4), None), ((4, 4), (2, 3))])
def test_2d(grid, size):
    check(indexing.offset_index_2d(grid, size), "2d", grid, size)


@pytest.mark.parametrize("grid,size", [((2, 2), None), ((3, 4), (3, 2))])
def test_2d_cls(grid, size):
    ix = indexing.offset_index_2d_cls(grid, size)
    check(ix, "2d_cls", grid, size)
    r = ix.num_classes
    assert ix.key[0, 0] == r - 3 and (ix.key[0, 1:] == r - 2).all() and (ix.key[1:, 0] == r - 1).all()


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
