"""Every layer's backward against central differences in float64, and the checker rejecting planted bugs.

Tolerance: with inputs of order 1 and h = 1e-5, central differences are accurate to ~1e-10
relative in float64 (truncation h^2 ~ 1e-10, rounding 1e-16/h ~ 1e-11), so a correct backward
shows relative errors around 1e-9 and we demand <= 1e-7; the planted bugs are off by 1e-2 to 1.
"""
import math

import numpy as np
import pytest

from bert_from_scratch.nn import layers
from bert_from_scratch.nn.attention import (MASK_VALUE, attention_backward_reference, attention_forward_reference,
                                         dropout_keep_mask)
from bert_from_scratch.nn.backend import get_backend
from bert_from_scratch.nn.gradcheck import gradcheck

TOL = 1e-7
H_STEP = 1e-5


def check_layer(forward, backward, inputs, grad_names, seed=0):
    """loss = sum(forward(**inputs) * R) for a fixed random R; compare backward(R) with finite differences.

    forward(**inputs) -> (out, cache); backward(R, cache) -> tuple of grads in the order of grad_names.
    """
    rng = np.random.default_rng(seed + 100)
    out, _ = forward(**inputs)
    R = rng.normal(size=np.shape(out))

    def loss():
        return float(np.sum(forward(**inputs)[0] * R))

    _, cache = forward(**inputs)
    grads = backward(R, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    analytic = dict(zip(grad_names, grads))
    return gradcheck(loss, {n: inputs[n] for n in grad_names}, analytic, h=H_STEP, tol=TOL, max_entries=40)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_linear(rng):
    inputs = {"x": rng.normal(size=(2, 3, 5)), "weight": rng.normal(size=(4, 5)), "bias": rng.normal(size=4)}
    check_layer(layers.linear_forward, layers.linear_backward, inputs, ["x", "weight", "bias"]).assert_ok()


def test_linear_with_the_bias_in_the_product(rng):
    """The decoder's form of the linear layer ([x | 1] [W | b]^T): the same output as the plain one, its backward
    against central differences, and a planted bug (the bias's gradient read from the wrong column) rejected."""
    inputs = {"x": rng.normal(size=(2, 3, 5)), "weight": rng.normal(size=(4, 5)), "bias": rng.normal(size=4)}
    y, _ = layers.linear_bias_in_product_forward(**inputs)
    np.testing.assert_allclose(y, layers.linear_forward(**inputs)[0], rtol=1e-13, atol=1e-13)
    check_layer(layers.linear_bias_in_product_forward, layers.linear_bias_in_product_backward, inputs,
                ["x", "weight", "bias"]).assert_ok()
    _, dweight, dbias = layers.linear_bias_in_product_backward(y, layers.linear_bias_in_product_forward(**inputs)[1])
    assert dweight.flags.c_contiguous and dbias.flags.c_contiguous      # kernels that add into them: one signature

    def bias_grad_from_the_first_column(dy, cache):
        dx, dweight, _ = layers.linear_bias_in_product_backward(dy, cache)
        x1 = cache[0]                                   # (N, in+1), [x | 1]
        return dx, dweight, (dy.reshape(-1, dy.shape[-1]).T @ x1)[:, 0]
    rep = check_layer(layers.linear_bias_in_product_forward, bias_grad_from_the_first_column, inputs,
                      ["x", "weight", "bias"])
    assert not rep.ok and [c.name for c in rep.failures()] == ["bias"]


def test_gelu_is_exact_erf_and_backward(rng):
    x = rng.normal(size=(4, 7)) * 3
    y, _ = layers.gelu_forward(x)
    expected = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(x)
    np.testing.assert_allclose(y, expected, rtol=1e-14, atol=1e-15)
    # the tanh approximation differs by up to ~1e-3: make sure we are not it
    tanh_approx = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    assert np.abs(y - tanh_approx).max() > 1e-5
    check_layer(lambda x: layers.gelu_forward(x), layers.gelu_backward, {"x": x}, ["x"]).assert_ok()


def test_layernorm(rng):
    inputs = {"x": rng.normal(size=(3, 4, 8)), "gamma": rng.normal(size=8), "beta": rng.normal(size=8)}
    rep = check_layer(lambda x, gamma, beta: layers.layernorm_forward(x, gamma, beta, 1e-12),
                      layers.layernorm_backward, inputs, ["x", "gamma", "beta"])
    rep.assert_ok()
    y, _ = layers.layernorm_forward(inputs["x"], np.ones(8), np.zeros(8), 1e-12)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1, rtol=1e-10)


def test_softmax(rng):
    check_layer(layers.softmax_forward, layers.softmax_backward, {"x": rng.normal(size=(3, 6))}, ["x"]).assert_ok()


def test_tanh(rng):
    check_layer(layers.tanh_forward, layers.tanh_backward, {"x": rng.normal(size=(3, 6))}, ["x"]).assert_ok()


def test_dropout_is_inverted_seeded_and_its_backward_uses_the_same_mask(rng):
    x = rng.normal(size=(50, 40))
    y1, c1 = layers.dropout_forward(x, 0.1, np.random.default_rng(3), training=True)
    y2, _ = layers.dropout_forward(x, 0.1, np.random.default_rng(3), training=True)
    np.testing.assert_array_equal(y1, y2)                           # seeded
    kept = y1 != 0
    assert abs(kept.mean() - 0.9) < 0.02                            # drops ~10%
    np.testing.assert_allclose(y1[kept], x[kept] / 0.9)              # inverted scaling
    y_eval, c_eval = layers.dropout_forward(x, 0.1, np.random.default_rng(3), training=False)
    assert y_eval is x and c_eval is None
    check_layer(lambda x: layers.dropout_forward(x, 0.3, np.random.default_rng(7)), layers.dropout_backward,
                {"x": x[:4, :5].copy()}, ["x"]).assert_ok()


def test_cross_entropy_with_ignore_index(rng):
    logits = rng.normal(size=(6, 5))
    labels = np.array([1, -100, 4, 0, -100, 2])
    loss, _ = layers.cross_entropy_forward(logits, labels)
    keep = labels != -100
    lp = logits[keep] - np.log(np.exp(logits[keep]).sum(-1, keepdims=True))
    assert math.isclose(float(loss), -lp[np.arange(keep.sum()), labels[keep]].mean(), rel_tol=1e-13)

    def fwd(logits):
        return layers.cross_entropy_forward(logits, labels)

    rep = check_layer(fwd, lambda d, c: layers.cross_entropy_backward(float(d), c), {"logits": logits}, ["logits"])
    rep.assert_ok()


def test_embedding_repeated_ids_get_the_sum(rng):
    W = rng.normal(size=(10, 4))
    ids = np.array([[1, 3, 1], [1, 9, 3]])                          # id 1 three times, 3 twice
    check_layer(lambda weight: layers.embedding_forward(ids, weight), layers.embedding_backward,
                {"weight": W}, ["weight"]).assert_ok()
    dy = np.ones((2, 3, 4))
    _, cache = layers.embedding_forward(ids, W)
    dW = layers.embedding_backward(dy, cache)
    np.testing.assert_array_equal(dW[:, 0], [0, 3, 0, 2, 0, 0, 0, 0, 0, 1])


@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_attention_reference(rng, dropout_p):
    B, Hh, T, d = 2, 3, 5, 4
    q, k, v = (rng.normal(size=(B, Hh, T, d)) for _ in range(3))
    mask = np.ones((B, T))
    mask[1, 3:] = 0

    def fwd(q, k, v):
        return attention_forward_reference(q, k, v, mask, dropout_p, seed=11)

    check_layer(fwd, attention_backward_reference, {"q": q, "k": k, "v": v}, ["q", "k", "v"]).assert_ok()
    out, cache = fwd(q, k, v)
    # padded keys get (numerically) zero probability; every row sums to one
    assert cache["probs"][1, :, :, 3:].max() == 0.0                  # exp(-10000) underflows to 0
    np.testing.assert_allclose(cache["probs"].sum(-1), 1.0, rtol=1e-12)
    # against a direct float64 computation
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(d) + (1 - mask)[:, None, None, :] * MASK_VALUE
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if dropout_p:
        p = p * dropout_keep_mask(11, B, Hh, T, T, dropout_p) / (1 - dropout_p)
    np.testing.assert_allclose(out, p @ v, rtol=1e-12, atol=1e-14)


def test_dropout_hash_mask_rate_and_determinism():
    m1 = dropout_keep_mask(5, 2, 4, 64, 64, 0.1)
    m2 = dropout_keep_mask(5, 2, 4, 64, 64, 0.1)
    m3 = dropout_keep_mask(6, 2, 4, 64, 64, 0.1)
    np.testing.assert_array_equal(m1, m2)
    assert (m1 != m3).mean() > 0.1                                   # another seed, another mask
    assert abs(m1.mean() - 0.9) < 0.005                              # 32k draws: sd ~0.002
    assert abs(m1[0, 0].mean() - m1[1, 3].mean()) < 0.03             # heads are not copies
    assert (m1[0, 0] != m1[0, 1]).any()


# --------------------------------------------------------------------------------------------
# The checker must REJECT wrong backwards
# --------------------------------------------------------------------------------------------
def layernorm_backward_missing_mean_term(dy, cache):
    xhat, rstd, gamma = cache
    dxhat = dy * gamma
    dx = (dxhat - xhat * (dxhat * xhat).mean(-1, keepdims=True)) * rstd      # BUG: no "- mean(dxhat)"
    return dx, (dy * xhat).reshape(-1, xhat.shape[-1]).sum(0), dy.reshape(-1, xhat.shape[-1]).sum(0)


def softmax_backward_missing_row_sum(dp, p):
    return p * dp                                                            # BUG: no "- sum(dp * p)"


def embedding_backward_overwrites(dy, cache):
    ids, shape = cache
    dW = np.zeros(shape)
    dW[ids.reshape(-1)] = dy.reshape(-1, shape[1])                           # BUG: repeats overwrite
    return dW


def gelu_backward_tanh_approx(dy, cache):
    x, _ = cache
    c = math.sqrt(2 / math.pi)
    t = np.tanh(c * (x + 0.044715 * x**3))
    return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x**2))   # BUG: wrong function


def test_gradcheck_rejects_planted_bugs(rng):
    x = rng.normal(size=(3, 8))
    g, b = rng.normal(size=8), rng.normal(size=8)
    rep = check_layer(lambda x, gamma, beta: layers.layernorm_forward(x, gamma, beta),
                      layernorm_backward_missing_mean_term, {"x": x, "gamma": g, "beta": b}, ["x", "gamma", "beta"])
    assert not rep.ok and rep.worst.name == "x" and rep.worst.rel_error > 1e-3
    with pytest.raises(AssertionError, match="gradient check failed.*x"):
        rep.assert_ok()

    rep = check_layer(layers.softmax_forward, softmax_backward_missing_row_sum, {"x": x}, ["x"])
    assert not rep.ok and rep.worst.rel_error > 1e-2

    ids = np.array([[1, 3, 1], [1, 9, 3]])
    rep = check_layer(lambda weight: layers.embedding_forward(ids, weight), embedding_backward_overwrites,
                      {"weight": rng.normal(size=(10, 4))}, ["weight"])
    assert not rep.ok

    rep = check_layer(lambda x: layers.gelu_forward(x), gelu_backward_tanh_approx, {"x": x * 2}, ["x"])
    assert not rep.ok, "the checker must see the difference between exact and tanh GELU"


def test_gradcheck_validates_its_arguments(rng):
    from bert_from_scratch.nn.gradcheck import gradcheck as gc
    x32 = rng.normal(size=3).astype(np.float32)
    with pytest.raises(ValueError, match="float64"):
        gc(lambda: float(x32.sum()), {"x": x32}, {"x": np.ones(3)})
    x = rng.normal(size=3)
    with pytest.raises(ValueError, match="shape"):
        gc(lambda: float(x.sum()), {"x": x}, {"x": np.ones(4)})


BACKENDS = ["numpy", "numba"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_layers_pass_the_gradient_check(rng, backend):
    """The layers a backend swaps (GELU, LayerNorm, dropout, the embedding scatter-add) against central
    differences, on the reference and on the fused kernels alike (float64)."""
    ops = get_backend(backend)
    x = rng.normal(size=(6, 9)) * 2
    check_layer(ops.gelu_forward, ops.gelu_backward, {"x": x}, ["x"]).assert_ok()
    ln = {"x": rng.normal(size=(6, 9)), "gamma": rng.normal(size=9), "beta": rng.normal(size=9)}
    check_layer(lambda x, gamma, beta: ops.layernorm_forward(x, gamma, beta, 1e-12), ops.layernorm_backward, ln,
                ["x", "gamma", "beta"]).assert_ok()
    check_layer(lambda x: ops.dropout_forward(x, 0.3, np.random.default_rng(7)), ops.dropout_backward, {"x": x},
                ["x"]).assert_ok()
    ids = np.array([0, 3, 3, 1])                                    # a repeated row must accumulate
    table = rng.normal(size=(5, 9))

    def embed(table):
        return table[ids], None

    def embed_backward(dy, cache):
        dtable = np.zeros_like(table)
        ops.scatter_add_rows(dtable, ids, dy)
        return dtable
    check_layer(embed, embed_backward, {"table": table}, ["table"]).assert_ok()


def _all_fused_paths(ops, x, dy, gamma, beta, ids, table):
    """Run GELU, LayerNorm (forward and backward), dropout and the embedding scatter-add of one backend."""
    y, c = ops.gelu_forward(x)
    dx = ops.gelu_backward(dy, c)
    h = x[..., :16]
    yl, cl = ops.layernorm_forward(h, gamma, beta)
    dxl, dgamma, dbeta = ops.layernorm_backward(np.ascontiguousarray(dy[..., :16]), cl)
    target = table.copy()
    ops.scatter_add_rows(target, ids, np.ascontiguousarray(dy[:len(ids), :16]))
    yd, cd = ops.dropout_forward(x, 0.1, np.random.default_rng(5))
    dxd = ops.dropout_backward(dy, cd)
    return {"gelu": y, "gelu.cdf": c[1], "gelu.dx": dx, "ln": yl, "ln.xhat": cl[0], "ln.rstd": cl[1],
            "ln.dx": dxl, "ln.dgamma": dgamma, "ln.dbeta": dbeta, "scatter": target,
            "dropout": yd, "dropout.dx": dxd}


def _fused_inputs(dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(9000, 33)) * 3).astype(dtype)          # > one 4096-element chunk, odd sizes
    dy = rng.normal(size=(9000, 33)).astype(dtype)
    gamma = rng.normal(size=16).astype(dtype)
    beta = rng.normal(size=16).astype(dtype)
    ids = rng.integers(0, 5, size=40)                              # repeated rows must accumulate
    table = rng.normal(size=(5, 16)).astype(dtype)
    return x, dy, gamma, beta, ids, table


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_fused_numba_kernels_equal_the_numpy_reference(dtype, tol):
    """The "numba" backend's GELU, LayerNorm, dropout and embedding backward (kernels/numba_layers.py)
    against the reference in nn/layers.py. Dropout's hash mask must be bit-identical (its backward
    regenerates it from the seed)."""
    inputs = _fused_inputs(dtype)
    fused = _all_fused_paths(get_backend("numba"), *inputs)
    reference = _all_fused_paths(get_backend("numpy"), *inputs)
    np.testing.assert_array_equal(fused["dropout"] == 0, reference["dropout"] == 0)
    np.testing.assert_array_equal(fused["dropout.dx"] == 0, fused["dropout"] == 0)
    for name in reference:
        assert fused[name].dtype == dtype, name
        # dgamma, dbeta sum 9000 rows: in float32 the summation order alone moves them by ~1e-5 relative
        scale = np.abs(reference[name]).max() if name in ("ln.dgamma", "ln.dbeta") else 1.0
        np.testing.assert_allclose(fused[name], reference[name], rtol=tol, atol=tol * 10 * scale, err_msg=name)


@pytest.mark.parametrize("bug, output", [("BUG_GELU_NO_PDF_TERM", "gelu.dx"),
                                         ("BUG_LAYERNORM_NO_MEAN_TERM", "ln.dx")])
def test_fused_kernel_comparison_rejects_a_planted_bug(bug, output):
    """The comparison above must fail for a fused backward that drops a term (a backend built with it)."""
    import dataclasses
    import functools

    from bert_from_scratch.kernels import numba_elementwise, numba_layers
    inputs = _fused_inputs(np.float64)
    reference = _all_fused_paths(get_backend("numpy"), *inputs)
    wrong = getattr(numba_elementwise, bug)
    planted = dataclasses.replace(
        get_backend("numba"), gelu_backward=functools.partial(numba_layers.gelu_backward, planted_bug=wrong),
        layernorm_backward=functools.partial(numba_layers.layernorm_backward, planted_bug=wrong))
    broken = _all_fused_paths(planted, *inputs)
    assert not np.allclose(broken[output], reference[output], rtol=1e-6, atol=1e-6)
    for name in reference:                                         # and nothing else changed
        if name != output:
            np.testing.assert_allclose(broken[name], reference[name], rtol=1e-12, atol=1e-12)


def test_fused_dropout_comparison_rejects_a_different_mask():
    """A fused dropout whose hash is seeded differently keeps ~90% of the entries too, so only the exact
    mask comparison of the test above can tell it from the reference."""
    from bert_from_scratch.kernels import numba_elementwise as ew
    from bert_from_scratch.kernels.kernel_args import dropout_threshold
    x = np.random.default_rng(0).normal(size=(64, 33))
    reference, _ = get_backend("numpy").dropout_forward(x, 0.1, np.random.default_rng(5))
    seed = int(np.random.default_rng(5).integers(0, 2**32))
    wrong = np.empty_like(x)                                  # the kernel, hashed from seed + 1
    ew.dropout_kernel(x.reshape(-1), ew.dropout_seed_hash(seed + 1), dropout_threshold(0.1), 1 / 0.9,
                      wrong.reshape(-1), 0)
    right = np.empty_like(x)
    ew.dropout_kernel(x.reshape(-1), ew.dropout_seed_hash(seed), dropout_threshold(0.1), 1 / 0.9, right.reshape(-1), 0)
    np.testing.assert_array_equal(right == 0, reference == 0)              # the right seed: the same mask
    assert abs((wrong != 0).mean() - 0.9) < 0.03                           # plausible statistics ...
    assert not np.array_equal(wrong == 0, reference == 0)                  # ... but not the same mask


def test_float32_erf_is_exact_to_float32_precision():
    """The float32 GELU uses a rational erf (vectorisable); it must agree with math.erf to a few ulps,
    far closer than the tanh approximation (which the gradient checks must reject)."""
    import math
    from bert_from_scratch.kernels import numba_elementwise as fused_kernels
    x = np.linspace(-8, 8, 400_001)
    exact = np.array([math.erf(v) for v in x])
    approx = fused_kernels.erf_float32(x).astype(np.float64)
    assert np.abs(approx - exact).max() < 1e-6
    one_ulp = float(np.spacing(np.float32(1.0)) / 2)                  # float32 ulp just below 1.0
    # saturated at +-1 far out, to the last ulp: vectorised (AVX-512) code may round the clamped x p / q one
    # ulp below where the scalar loop gives 1.0 exactly
    assert abs(approx[0] + 1.0) <= one_ulp and abs(approx[-1] - 1.0) <= one_ulp
    gelu32 = get_backend("numba").gelu_forward(x.astype(np.float32))[0].astype(np.float64)
    gelu_exact = x * 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x]))
    tanh_gelu = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    err = np.abs(gelu32 - gelu_exact) / np.maximum(1.0, np.abs(x))
    assert err.max() < 2e-6
    assert np.abs(tanh_gelu - gelu_exact).max() > 1e-4                 # what "exact" rules out

