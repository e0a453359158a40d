"""The embeddings' sum of three lookups (``Backend.embedding_sum``: nn/layers.py, kernels/numba_layers.py).

The reference is checked against the lookups written out, the Numba kernel against the reference bit for bit (the
same two float adds in the same order) in float32 and float64, and the comparison is shown to reject a kernel with
a planted bug. The backward of the sum (a scatter-add per table) is gradient-checked in tests/test_layers.py.
"""
import numpy as np
import pytest

from bert_from_scratch.kernels import numba_elementwise, numba_layers
from bert_from_scratch.nn import layers


def _inputs(dtype, B=5, T=7, seed=0):
    rng = np.random.default_rng(seed)
    word = rng.normal(size=(11, 6)).astype(dtype)
    types = rng.normal(size=(2, 6)).astype(dtype)
    position = rng.normal(size=(9, 6)).astype(dtype)           # max length 9 > T: only the first T rows are read
    ids = rng.integers(0, 11, size=(B, T))
    ids[0, :3] = 4                                               # repeated ids
    token_types = rng.integers(0, 2, size=(B, T))
    return ids, token_types, word, types, position


def test_the_reference_sums_the_three_lookups():
    ids, token_types, word, types, position = _inputs(np.float64)
    x = layers.embedding_sum(ids, token_types, word, types, position)
    assert x.shape == (5, 7, 6)
    for b in range(5):
        for t in range(7):
            np.testing.assert_array_equal(x[b, t], word[ids[b, t]] + types[token_types[b, t]] + position[t])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("id_dtype", [np.int64, np.int32])
def test_the_kernel_equals_the_reference_bit_for_bit(dtype, id_dtype):
    ids, token_types, word, types, position = _inputs(dtype)
    got = numba_layers.embedding_sum(ids.astype(id_dtype), token_types.astype(id_dtype), word, types, position)
    want = layers.embedding_sum(ids, token_types, word, types, position)
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_the_comparison_rejects_a_planted_bug():
    """A kernel that adds position 0's vector everywhere is right at t = 0 only: the comparison fails."""
    ids, token_types, word, types, position = _inputs(np.float64)
    want = layers.embedding_sum(ids, token_types, word, types, position)
    wrong = numba_layers.embedding_sum(ids, token_types, word, types, position,
                                       planted_bug=numba_elementwise.BUG_EMBEDDING_FIRST_POSITION)
    np.testing.assert_array_equal(wrong[:, 0], want[:, 0])
    assert not np.allclose(wrong, want)
