"""The Numba backend's fused cross-entropy (kernels/numba_loss.py) against the reference in nn/layers.py.

Loss and gradient in float64 and float32, rows that are ignored (-100), logits of ~1000 (the row-max
shift), a gradient check by central differences, and a planted bug (the gradient without its one-hot
term) rejected by the same comparison.
"""
import numpy as np
import pytest

from bert_from_scratch.kernels import numba_loss
from bert_from_scratch.nn import layers
from bert_from_scratch.nn.backend import get_backend
from bert_from_scratch.nn.gradcheck import gradcheck


def _inputs(dtype, n=300, k=1001, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, k)) * scale).astype(dtype)
    labels = rng.integers(0, k, size=n)
    labels[::7] = -100                                          # ignored rows
    return logits, labels


def _both(ops, logits, labels, dloss=1.0):
    loss, cache = ops.cross_entropy_forward(logits, labels)
    return float(loss), np.array(ops.cross_entropy_backward(dloss, cache))


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("scale", [3.0, 1000.0])
def test_fused_cross_entropy_equals_the_reference(dtype, tol, scale):
    logits, labels = _inputs(dtype, scale=scale)
    for dloss in (1.0, 0.37):
        loss, dlogits = _both(get_backend("numba"), logits, labels, dloss)
        want_loss, want = _both(get_backend("numpy"), logits, labels, dloss)
        assert np.isfinite(loss) and dlogits.dtype == dtype
        np.testing.assert_allclose(loss, want_loss, rtol=tol)
        np.testing.assert_allclose(dlogits, want, rtol=tol, atol=tol * 1e-2)
        assert not dlogits[::7].any(), "ignored rows must get a zero gradient"


def test_fused_cross_entropy_with_every_row_ignored_is_zero_not_nan():
    logits, labels = _inputs(np.float32, n=5, k=9)
    loss, dlogits = _both(get_backend("numba"), logits, np.full(5, -100))
    assert loss == 0.0 and not dlogits.any()


def test_fused_cross_entropy_passes_the_gradient_check():
    logits, labels = _inputs(np.float64, n=6, k=11)
    ops = get_backend("numba")
    _, cache = ops.cross_entropy_forward(logits, labels)
    analytic = {"logits": np.array(ops.cross_entropy_backward(1.0, cache))}
    gradcheck(lambda: float(ops.cross_entropy_forward(logits, labels)[0]), {"logits": logits}, analytic,
              h=1e-5, tol=1e-7).assert_ok()


def test_fused_cross_entropy_comparison_rejects_a_planted_bug():
    logits, labels = _inputs(np.float64)
    loss, broken = numba_loss.cross_entropy_forward(logits, labels, planted_bug=numba_loss.BUG_NO_ONEHOT)
    want_loss, want = _both(get_backend("numpy"), logits, labels)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-12)     # the loss is right ...
    assert not np.allclose(numba_loss.cross_entropy_backward(1.0, broken), want, atol=1e-6)   # ... its gradient not
    assert layers.cross_entropy_forward is get_backend("numpy").cross_entropy_forward
