"""The fused tails of the encoder blocks (bias + GELU; bias + dropout + residual + LayerNorm).

The reference twins in ``nn/layers.py`` are gradient-checked in float64; the Numba kernels
(``kernels/numba_fused.py``) are gradient-checked too and compared output by output with the
reference in float32 and float64 (the dropout mask bit for bit); and a planted bug in each fused
backward is shown to be rejected by that comparison.
"""
import dataclasses
import functools

import numpy as np
import pytest

from bert_from_scratch.kernels import numba_fused
from bert_from_scratch.nn import layers
from bert_from_scratch.nn.backend import get_backend
from test_layers import check_layer

BACKENDS = ["numpy", "numba"]


def _residual_ln(ops, p, seed=5, row_offset=0, training=True):
    """The op with a fixed dropout seed, as check_layer wants: forward(o, bias, x, gamma, beta)."""
    def forward(o, bias, x, gamma, beta):
        return ops.bias_dropout_add_layernorm_forward(o, bias, x, gamma, beta, p, np.random.default_rng(seed),
                                                      training, 1e-12, row_offset)
    return forward


@pytest.mark.parametrize("backend", BACKENDS)
def test_bias_gelu_passes_the_gradient_check(backend):
    ops = get_backend(backend)
    rng = np.random.default_rng(0)
    inputs = {"h": rng.normal(size=(2, 5, 9)) * 2, "bias": rng.normal(size=9)}
    check_layer(ops.bias_gelu_forward, ops.bias_gelu_backward, inputs, ["h", "bias"]).assert_ok()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_bias_dropout_add_layernorm_passes_the_gradient_check(backend, p):
    ops = get_backend(backend)
    rng = np.random.default_rng(1)
    inputs = {"o": rng.normal(size=(2, 5, 9)), "bias": rng.normal(size=9), "x": rng.normal(size=(2, 5, 9)),
              "gamma": rng.normal(size=9), "beta": rng.normal(size=9)}
    check_layer(_residual_ln(ops, p), ops.bias_dropout_add_layernorm_backward, inputs,
                ["o", "x", "bias", "gamma", "beta"]).assert_ok()


def test_reference_twins_compose_the_unfused_layers():
    """The reference twins are the blocks' old sequence of layers, to the bit (same rng draws)."""
    rng = np.random.default_rng(2)
    o, x, dy = (rng.normal(size=(3, 4, 8)).astype(np.float32) for _ in range(3))
    bias, gamma, beta = (rng.normal(size=8).astype(np.float32) for _ in range(3))
    y, _ = layers.bias_dropout_add_layernorm_forward(o, bias, x, gamma, beta, 0.2, np.random.default_rng(9),
                                                     row_offset=3)
    out = o + bias
    out, _ = layers.dropout_forward(out, 0.2, np.random.default_rng(9), row_offset=3)
    out += x
    np.testing.assert_array_equal(y, layers.layernorm_forward(out, gamma, beta)[0])
    g, _ = layers.bias_gelu_forward(o, bias)
    np.testing.assert_array_equal(g, layers.gelu_forward(o + bias)[0])


def _fused_paths(ops, o, x, dy, bias, gamma, beta, p=0.1, row_offset=0, training=True):
    """Both fused ops of one backend, forward and backward, every output by name."""
    g, c_gelu = ops.bias_gelu_forward(o, bias)
    dh, db_gelu = ops.bias_gelu_backward(dy, c_gelu)
    y, c_ln = ops.bias_dropout_add_layernorm_forward(o, bias, x, gamma, beta, p, np.random.default_rng(5), training,
                                                     1e-12, row_offset)
    do, dx, db, dgamma, dbeta = ops.bias_dropout_add_layernorm_backward(dy, c_ln)
    return {"gelu": g, "gelu.dh": dh, "gelu.dbias": db_gelu, "ln": y, "ln.do": do, "ln.dx": dx,
            "ln.dbias": db, "ln.dgamma": dgamma, "ln.dbeta": dbeta}


def _inputs(dtype, shape=(40, 70, 33), seed=0):
    rng = np.random.default_rng(seed)
    o = (rng.normal(size=shape) * 2).astype(dtype)                 # odd sizes, more rows than tasks
    x, dy = (rng.normal(size=shape).astype(dtype) for _ in range(2))
    bias, gamma, beta = (rng.normal(size=shape[-1]).astype(dtype) for _ in range(3))
    return o, x, dy, bias, gamma, beta


ROW_SUMS = ("gelu.dbias", "ln.dbias", "ln.dgamma", "ln.dbeta")


def _assert_close(fused, reference, tol):
    for name in reference:
        assert fused[name].dtype == reference[name].dtype, name
        assert fused[name].shape == reference[name].shape, name
        # the row sums add 2,800 rows: in float32 the summation order alone moves them by ~1e-5 relative
        scale = np.abs(reference[name]).max() if name in ROW_SUMS else 1.0
        np.testing.assert_allclose(fused[name], reference[name], rtol=tol, atol=tol * 10 * scale, err_msg=name)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
@pytest.mark.parametrize("p, row_offset, training", [(0.1, 0, True), (0.1, 17, True), (0.0, 0, True),
                                                     (0.1, 0, False)])
def test_numba_fused_ops_equal_the_reference(dtype, tol, p, row_offset, training):
    """Every output of the Numba kernels against the reference twins; the dropout mask bit for bit
    (row_offset too: a data-parallel rank's shard drops what the whole batch would)."""
    inputs = _inputs(dtype)
    fused = _fused_paths(get_backend("numba"), *inputs, p=p, row_offset=row_offset, training=training)
    reference = _fused_paths(get_backend("numpy"), *inputs, p=p, row_offset=row_offset, training=training)
    _assert_close(fused, reference, tol)
    o, bias = inputs[0], inputs[3]
    dropped = (reference["ln.do"] == 0) & (inputs[2] != 0)
    if p > 0 and training:
        assert 0.05 < dropped.mean() < 0.15                           # the mask is real ...
        _, c_ref = layers.dropout_forward(o + bias, p, np.random.default_rng(5), row_offset=row_offset)
        np.testing.assert_array_equal(fused["ln.do"] == 0, ~c_ref[0])  # ... and the reference's, to the bit
    else:
        assert not dropped.any()


def test_numba_fused_ops_match_on_the_default_job_shape():
    """(B, T, H) = (16, 64, 128) and the FFN width 512, float32: the shapes the default job runs."""
    o, x, dy, bias, gamma, beta = _inputs(np.float32, (16, 64, 128), seed=3)
    fused = _fused_paths(get_backend("numba"), o, x, dy, bias, gamma, beta)
    reference = _fused_paths(get_backend("numpy"), o, x, dy, bias, gamma, beta)
    _assert_close(fused, reference, 2e-6)
    wide = _inputs(np.float32, (16, 64, 512), seed=4)
    g32, c = get_backend("numba").bias_gelu_forward(wide[0], wide[3])
    g64, _ = layers.bias_gelu_forward(wide[0].astype(np.float64), wide[3].astype(np.float64))
    np.testing.assert_allclose(g32, g64, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("bug, output", [("BUG_GELU_NO_PDF_TERM", "gelu.dh"),
                                         ("BUG_DROPOUT_GRAD_UNMASKED", "ln.do")])
def test_fused_ops_comparison_rejects_a_planted_bug(bug, output):
    """The comparison above fails for a fused backward with a planted bug, and only at the output it breaks."""
    inputs = _inputs(np.float64)
    reference = _fused_paths(get_backend("numpy"), *inputs)
    wrong = getattr(numba_fused, bug)
    planted = dataclasses.replace(
        get_backend("numba"),
        bias_gelu_backward=functools.partial(numba_fused.bias_gelu_backward, planted_bug=wrong),
        bias_dropout_add_layernorm_backward=functools.partial(numba_fused.bias_dropout_add_layernorm_backward,
                                                              planted_bug=wrong))
    broken = _fused_paths(planted, *inputs)
    with pytest.raises(AssertionError, match=output.replace(".", r"\.")):
        _assert_close(broken, reference, 1e-12)
    for name in reference:
        if name != output and not (output == "gelu.dh" and name == "gelu.dbias") \
                and not (output == "ln.do" and name == "ln.dbias"):
            np.testing.assert_allclose(broken[name], reference[name], rtol=1e-12, atol=1e-11, err_msg=name)


def test_fused_gradient_check_rejects_a_planted_bug():
    """The float64 gradient check itself catches the planted bugs."""
    rng = np.random.default_rng(0)
    backward = functools.partial(numba_fused.bias_gelu_backward, planted_bug=numba_fused.BUG_GELU_NO_PDF_TERM)
    rep = check_layer(numba_fused.bias_gelu_forward, backward, {"h": rng.normal(size=(4, 9)) * 2,
                                                                "bias": rng.normal(size=9)}, ["h", "bias"])
    assert not rep.ok
    inputs = {"o": rng.normal(size=(4, 9)), "bias": rng.normal(size=9), "x": rng.normal(size=(4, 9)),
              "gamma": rng.normal(size=9), "beta": rng.normal(size=9)}
    backward = functools.partial(numba_fused.bias_dropout_add_layernorm_backward,
                                 planted_bug=numba_fused.BUG_DROPOUT_GRAD_UNMASKED)
    rep = check_layer(_residual_ln(get_backend("numba"), 0.3), backward, inputs, ["o", "x", "bias", "gamma", "beta"])
    assert not rep.ok


def test_linear_without_bias_leaves_it_to_the_fused_op():
    """``linear_forward(x, W, None)`` is the bare matmul and ``linear_backward(..., bias=False)`` skips the bias
    sum; with the fused op's bias they give the biased layer's values and gradients."""
    rng = np.random.default_rng(3)
    x, w, b = rng.normal(size=(2, 3, 5)), rng.normal(size=(4, 5)), rng.normal(size=4)
    y, cache = layers.linear_forward(x, w, None)
    np.testing.assert_array_equal(y, x @ w.T)
    y_b, cache_b = layers.linear_forward(x, w, b)
    dy = rng.normal(size=y.shape)
    dx, dw, db = layers.linear_backward(dy, cache, bias=False)
    dx_b, dw_b, db_b = layers.linear_backward(dy, cache_b)
    assert db is None and db_b.shape == (4,)
    np.testing.assert_array_equal(dx, dx_b)
    np.testing.assert_array_equal(dw, dw_b)
    g, c = layers.bias_gelu_forward(y, b)
    np.testing.assert_array_equal(g, layers.gelu_forward(y_b)[0])
    np.testing.assert_allclose(layers.bias_gelu_backward(dy, c)[1], layers.gelu_backward(dy, c).sum(axis=(0, 1)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_fused_tail_exposes_its_layernorm_cache(backend):
    """cache[0] of the fused tail is the backend's own LayerNorm cache: ``layernorm_backward`` on it gives the
    tail's d(x) (the skip path alone, as chapter 6 plots it through ``FFNBlockCache.layernorm``)."""
    ops = get_backend(backend)
    o, x, dy, bias, gamma, beta = _inputs(np.float64, (4, 6, 10))
    _, cache = ops.bias_dropout_add_layernorm_forward(o, bias, x, gamma, beta, 0.1, np.random.default_rng(1))
    _, dx, _, dgamma, dbeta = ops.bias_dropout_add_layernorm_backward(dy, cache)
    ln_dx, ln_dgamma, ln_dbeta = ops.layernorm_backward(dy, cache[0])
    np.testing.assert_allclose(ln_dx, dx, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ln_dgamma, dgamma, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ln_dbeta, dbeta, rtol=1e-12, atol=1e-13)
