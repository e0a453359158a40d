"""The moves between the Q/K/V projection's layout and the heads' (nn/heads.py, kernels/numba_heads.py).

Both backends are gradient-checked in float64 (the backward is the forward's adjoint, bias included), the Numba
kernels are compared with the reference in float32 and float64 for three parts (every layer) and two (the last
layer at the heads' rows), and a planted bug in the kernel's bias gradient is shown to be caught.
"""
import numpy as np
import pytest

from bert_from_scratch.kernels import numba_heads
from bert_from_scratch.nn import heads
from bert_from_scratch.nn.backend import get_backend
from test_layers import check_layer


def _stacked(ops, n_parts, n_heads):
    """forward(y, bias) -> (the parts stacked, None) and backward(R, cache) for check_layer."""
    def forward(y, bias):
        return np.stack(ops.split_heads_forward(y, bias, n_parts, n_heads)), None

    def backward(r, cache):
        return ops.split_heads_backward(tuple(r))
    return forward, backward


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("n_parts", [2, 3])
def test_split_heads_passes_the_gradient_check(backend, n_parts):
    rng = np.random.default_rng(n_parts)
    nh, d = 2, 3
    inputs = {"y": rng.normal(size=(2, 5, n_parts * nh * d)), "bias": rng.normal(size=n_parts * nh * d)}
    forward, backward = _stacked(get_backend(backend), n_parts, nh)
    check_layer(forward, backward, inputs, ["y", "bias"]).assert_ok()


def test_the_reference_is_the_head_layout_plus_the_bias():
    """Part j, head h, position t holds y[b, t, (j*nh + h)*d : ...] + bias, as the unfused code made it."""
    rng = np.random.default_rng(0)
    B, T, nh, d = 2, 4, 3, 5
    y, bias = rng.normal(size=(B, T, 3 * nh * d)), rng.normal(size=3 * nh * d)
    q, k, v = heads.split_heads_forward(y, bias, 3, nh)
    for j, part in enumerate((q, k, v)):
        assert part.shape == (B, nh, T, d) and part.flags.c_contiguous
        for h in range(nh):
            cols = slice((j * nh + h) * d, (j * nh + h + 1) * d)
            np.testing.assert_array_equal(part[:, h], y[:, :, cols] + bias[cols])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_parts", [2, 3])
def test_the_kernels_match_the_reference(dtype, n_parts):
    rng = np.random.default_rng(7)
    B, T, nh, d = 5, 70, 2, 64                          # the default job's heads; T past one vector of lanes
    y = rng.normal(size=(B, T, n_parts * nh * d)).astype(dtype)
    bias = rng.normal(size=n_parts * nh * d).astype(dtype)
    got, want = numba_heads.split_heads_forward(y, bias, n_parts, nh), heads.split_heads_forward(y, bias, n_parts, nh)
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.flags.c_contiguous
        np.testing.assert_array_equal(g, w)
    grads = tuple(rng.normal(size=(B, nh, T, d)).astype(dtype) for _ in range(n_parts))
    (dy, db), (dy_ref, db_ref) = numba_heads.split_heads_backward(grads), heads.split_heads_backward(grads)
    np.testing.assert_array_equal(dy, dy_ref)
    np.testing.assert_allclose(db, db_ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-4)


def test_a_planted_bug_in_the_bias_gradient_is_caught():
    rng = np.random.default_rng(3)
    grads = tuple(rng.normal(size=(3, 2, 6, 4)) for _ in range(3))
    _, db_ref = heads.split_heads_backward(grads)
    dy, db = numba_heads.split_heads_backward(grads, planted_bug=numba_heads.BUG_BIAS_GRAD_ONE_ROW)
    np.testing.assert_array_equal(dy, heads.split_heads_backward(grads)[0])      # the copy itself is right
    assert not np.allclose(db, db_ref, rtol=1e-5, atol=1e-4)
