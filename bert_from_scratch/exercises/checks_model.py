r"""Checks for the chapters on the encoder's pieces: attention and its backward (3), multi-head
attention and masking (4), LayerNorm and GELU (5), the encoder block (6), the MLM / NSP heads and
their losses (7).

Forward passes are compared with the package's reference layers, backward passes go through the
finite-difference gradient checker (float64). Every function gets read-only inputs (a backward a
read-only cache), float32 inputs must give float32 outputs, and the softmax-like ones (attention,
cross-entropy) get scores ~1000; :mod:`.checks` lists the checks per chapter.
"""
from __future__ import annotations

import math

import numpy as np

from ..constants import IGNORE_INDEX
from ..nn import layers
from ..nn.attention import additive_mask, attention_forward_reference
from .grader import (STABILITY_HINT, Wrong, call_pair, expect_close, expect_dtype, expect_gradients, fixed_rng,
                     freeze, frozen, get_function)


def f32(*arrays):
    """Read-only float32 copies (float arrays only; integer masks and labels stay as they are)."""
    return frozen(*(a.astype(np.float32) if np.asarray(a).dtype.kind == "f" else a for a in arrays))


def expect_float32(what, *arrays):
    for i, a in enumerate(arrays):
        expect_dtype(what if len(arrays) == 1 else f"{what} (output {i})", a)


# =======================================================================================
# Chapter 3 — attention and its backward
# =======================================================================================
def _attention_inputs(seed=4):
    rng = fixed_rng(seed)
    B, H, T, d = 2, 2, 5, 4
    q, k, v = (rng.normal(size=(B, H, T, d)) for _ in range(3))
    mask = np.ones((B, T), dtype=np.int64)
    mask[1, 3:] = 0                                          # the second sequence has 2 padding tokens
    return q, k, v, mask


def check_attention_forward(module):
    q, k, v, mask = _attention_inputs()
    out, _ = call_pair(module, "attention_forward", *frozen(q, k, v, mask))
    want, _ = attention_forward_reference(q, k, v, mask)
    unscaled, _ = attention_forward_reference(q * math.sqrt(q.shape[-1]), k, v, mask)
    no_mask, _ = attention_forward_reference(q, k, v, None)
    note = expect_close("attention_forward output", out, want, variants={
        "the scores are not divided by sqrt(d)": unscaled,
        "the padding mask is not applied (add -10000 to the scores of keys whose mask is 0)": no_mask})
    out, _ = call_pair(module, "attention_forward", *frozen(q, k, v), None)
    expect_close("attention_forward output with mask=None", out, no_mask)
    with np.errstate(all="ignore"):                           # scores ~1000: exp overflows without the shift
        out, _ = call_pair(module, "attention_forward", *frozen(q * 1000.0, k, v, mask))
    expect_close("attention_forward output for scores ~1000", out,
                 attention_forward_reference(q * 1000.0, k, v, mask)[0], nonfinite=STABILITY_HINT)
    out, _ = call_pair(module, "attention_forward", *f32(q, k, v, mask))
    expect_float32("attention_forward output", out)
    expect_close("attention_forward output for float32 inputs", out, want, rtol=1e-4, atol=1e-5)
    return f"matches the reference with padding, without a mask, for scores ~1000 and in float32 ({note})"


def check_attention_backward(module):
    q, k, v, mask = _attention_inputs()
    fwd, bwd = get_function(module, "attention_forward"), get_function(module, "attention_backward")
    w = fixed_rng(5).normal(size=q.shape)
    _, cache = call_pair(module, "attention_forward", *frozen(q, k, v, mask))
    result = bwd(frozen(w), freeze(cache))
    if not (isinstance(result, tuple) and len(result) == 3):
        raise Wrong("attention_backward must return (dq, dk, dv)")
    inputs = {"q": q, "k": k, "v": v}
    softmax_hint = ("the softmax backward is dS = P * (dP - rowsum(dP * P)); dq and dk also carry the "
                    "1/sqrt(d) of the forward")
    note = expect_gradients("attention_backward", lambda: float((fwd(q, k, v, mask)[0] * w).sum()),
                            inputs, dict(zip(inputs, result)), hints={
                                "q": softmax_hint, "k": softmax_hint + "; dk = dS^T q / sqrt(d)",
                                "v": "O = P V, so dV = P^T dO"})
    _, cache = call_pair(module, "attention_forward", *f32(q, k, v, mask))
    expect_float32("attention_backward's gradients", *bwd(f32(w), freeze(cache)))
    return note + "; float32 stays float32"


# =======================================================================================
# Chapter 4 — multi-head attention and masking
# =======================================================================================
def check_split_heads(module):
    x = fixed_rng(6).normal(size=(2, 5, 12))
    expect_float32("split_heads output", get_function(module, "split_heads")(f32(x), 3))
    got = get_function(module, "split_heads")(frozen(x), 3)
    want = x.reshape(2, 5, 3, 4).transpose(0, 2, 1, 3)
    note = expect_close("split_heads(x (2, 5, 12), 3)", got, want, rtol=0, atol=0, variants={
        "a plain reshape to (B, nh, T, d) mixes tokens into heads: reshape to (B, T, nh, d), then transpose":
            x.reshape(2, 3, 5, 4)})
    return f"(B, T, H) -> (B, nh, T, d) is right ({note})"


def check_merge_heads(module):
    x = fixed_rng(7).normal(size=(2, 3, 5, 4))
    expect_float32("merge_heads output", get_function(module, "merge_heads")(f32(x)))
    got = get_function(module, "merge_heads")(frozen(x))
    want = x.transpose(0, 2, 1, 3).reshape(2, 5, 12)
    expect_close("merge_heads(x (2, 3, 5, 4))", got, want, rtol=0, atol=0, variants={
        "a plain reshape mixes heads into tokens: transpose to (B, T, nh, d) first": x.reshape(2, 5, 12)})
    return "(B, nh, T, d) -> (B, T, H) is right: the inverse of split_heads"


def check_attention_mask_bias(module):
    mask = frozen(np.array([[1, 1, 1, 0], [1, 1, 0, 0]]))
    fn = get_function(module, "attention_mask_bias")
    for dtype in (np.float32, np.float64):
        got = fn(mask, dtype)
        want = additive_mask(mask, np.dtype(dtype))
        if getattr(got, "dtype", None) != np.dtype(dtype):
            raise Wrong(f"attention_mask_bias(mask, {dtype.__name__}) has dtype {getattr(got, 'dtype', None)}; "
                        f"expected {dtype.__name__}")
        expect_close(f"attention_mask_bias(mask (2, 4), {dtype.__name__})", got, want, variants={
            "the bias has the wrong sign: it must be -10000 (not +10000) at padding": -want,
            "the bias is on the real tokens: -10000 goes where the mask is 0 (padding)":
                (mask * -10000.0)[:, None, None, :]})
    return "(B, T) -> (B, 1, 1, T) bias with 0 / -10000, broadcasting over heads and queries"


# =======================================================================================
# Chapter 5 — LayerNorm and GELU
# =======================================================================================
def _ln_inputs():
    rng = fixed_rng(8)
    return rng.normal(1.0, 2.0, size=(3, 4, 6)), rng.normal(size=6), rng.normal(size=6)


def check_layernorm_forward(module):
    x, gamma, beta = _ln_inputs()
    y, _ = call_pair(module, "layernorm_forward", *frozen(x, gamma, beta))
    want, _ = layers.layernorm_forward(x, gamma, beta, 1e-12)
    mean = x.mean(-1, keepdims=True)
    unbiased = (x - mean) / x.std(-1, ddof=1, keepdims=True) * gamma + beta
    note = expect_close("layernorm_forward output", y, want, variants={
        "the variance is the unbiased one (ddof=1); LayerNorm divides by C": unbiased,
        "gamma and beta are not applied": (want - beta) / gamma})
    y32, _ = call_pair(module, "layernorm_forward", *f32(x, gamma, beta))
    expect_float32("layernorm_forward output", y32)
    expect_close("layernorm_forward output for float32 inputs", y32, want, rtol=1e-4, atol=1e-4)
    return f"matches the reference ({note})"


def check_layernorm_backward(module):
    x, gamma, beta = _ln_inputs()
    fwd, bwd = get_function(module, "layernorm_forward"), get_function(module, "layernorm_backward")
    w = fixed_rng(9).normal(size=x.shape)
    _, cache = call_pair(module, "layernorm_forward", *frozen(x, gamma, beta))
    result = bwd(frozen(w), freeze(cache))
    if not (isinstance(result, tuple) and len(result) == 3):
        raise Wrong("layernorm_backward must return (dx, dgamma, dbeta)")
    inputs = {"x": x, "gamma": gamma, "beta": beta}
    note = expect_gradients("layernorm_backward", lambda: float((fwd(x, gamma, beta)[0] * w).sum()),
                            inputs, dict(zip(inputs, result)), hints={
                                "x": "dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * "
                                     "gamma: both mean terms are needed (the mean and the variance depend on x)",
                                "gamma": "dgamma = sum over all rows of dy * xhat",
                                "beta": "dbeta = sum over all rows of dy"})
    _, cache32 = call_pair(module, "layernorm_forward", *f32(x, gamma, beta))
    expect_float32("layernorm_backward's gradients", *bwd(f32(w), freeze(cache32)))
    return note + "; float32 stays float32"


def check_gelu_forward(module):
    x = np.linspace(-5, 5, 41)
    y, _ = call_pair(module, "gelu_forward", frozen(x))
    want, _ = layers.gelu_forward(x)
    tanh_approx = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    note = expect_close("gelu_forward output", y, want, rtol=1e-9, atol=1e-12, variants={
        "the tanh approximation; BERT uses the exact GELU, x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))": tanh_approx})
    y32, _ = call_pair(module, "gelu_forward", f32(x))
    expect_float32("gelu_forward output", y32)
    expect_close("gelu_forward output for float32 inputs", y32, want, rtol=1e-5, atol=1e-6)
    return f"exact erf GELU ({note})"


def check_gelu_backward(module):
    x = np.linspace(-4, 4, 33) + 0.01
    fwd, bwd = get_function(module, "gelu_forward"), get_function(module, "gelu_backward")
    w = fixed_rng(10).normal(size=x.shape)
    _, cache = call_pair(module, "gelu_forward", frozen(x))
    dx = bwd(frozen(w), freeze(cache))
    note = expect_gradients("gelu_backward", lambda: float((fwd(x)[0] * w).sum()), {"x": x}, {"x": dx},
                            hints={"x": "d/dx [x Phi(x)] = Phi(x) + x phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi)"})
    _, cache32 = call_pair(module, "gelu_forward", f32(x))
    expect_float32("gelu_backward's gradient", bwd(f32(w), freeze(cache32)))
    return note + "; float32 stays float32"


# =======================================================================================
# Chapter 6 — the encoder block and the residual stream
# =======================================================================================
FFN_NAMES = ("x", "w1", "b1", "w2", "b2", "gamma", "beta")


def _ffn_inputs():
    rng = fixed_rng(11)
    B, T, H, I = 2, 3, 4, 8
    return {"x": rng.normal(size=(B, T, H)), "w1": rng.normal(0, 0.5, size=(I, H)), "b1": rng.normal(size=I),
            "w2": rng.normal(0, 0.5, size=(H, I)), "b2": rng.normal(size=H), "gamma": rng.normal(size=H),
            "beta": rng.normal(size=H)}


def _ffn_reference(p):
    h, _ = layers.linear_forward(p["x"], p["w1"], p["b1"])
    g, _ = layers.gelu_forward(h)
    f, _ = layers.linear_forward(g, p["w2"], p["b2"])
    return layers.layernorm_forward(p["x"] + f, p["gamma"], p["beta"], 1e-12)[0], f


def check_ffn_block_forward(module):
    p = _ffn_inputs()
    y, _ = call_pair(module, "ffn_block_forward", *frozen(*(p[n] for n in FFN_NAMES)))
    want, f = _ffn_reference(p)
    no_residual = layers.layernorm_forward(f, p["gamma"], p["beta"], 1e-12)[0]
    note = expect_close("ffn_block_forward output", y, want, variants={
        "the residual is missing: LayerNorm(x + FFN(x)), not LayerNorm(FFN(x))": no_residual})
    y32, _ = call_pair(module, "ffn_block_forward", *f32(*(p[n] for n in FFN_NAMES)))
    expect_float32("ffn_block_forward output", y32)
    expect_close("ffn_block_forward output for float32 inputs", y32, want, rtol=1e-3, atol=1e-3)
    return f"matches the reference ({note})"


def check_ffn_block_backward(module):
    p = _ffn_inputs()
    fwd, bwd = get_function(module, "ffn_block_forward"), get_function(module, "ffn_block_backward")
    w = fixed_rng(12).normal(size=p["x"].shape)
    _, cache = call_pair(module, "ffn_block_forward", *frozen(*(p[n] for n in FFN_NAMES)))
    grads = bwd(frozen(w), freeze(cache))
    if not isinstance(grads, dict):
        raise Wrong(f"ffn_block_backward must return a dict with keys {', '.join('d' + n for n in FFN_NAMES)}")
    missing = ["d" + n for n in FFN_NAMES if "d" + n not in grads]
    if missing:
        raise Wrong(f"ffn_block_backward's dict lacks {', '.join(missing)}")
    note = expect_gradients("ffn_block_backward",
                            lambda: float((fwd(*(p[n] for n in FFN_NAMES))[0] * w).sum()), p,
                            {n: grads["d" + n] for n in FFN_NAMES}, hints={
                                "x": "x reaches the output twice, through the block and straight into the "
                                     "residual sum: dx = dsum + (gradient through the block)",
                                "w1": "dW1 = dh^T x over all rows (dh = gelu_backward of dg)",
                                "w2": "dW2 = dsum^T gelu(h) over all rows"})
    _, cache32 = call_pair(module, "ffn_block_forward", *f32(*(p[n] for n in FFN_NAMES)))
    grads32 = bwd(f32(w), freeze(cache32))
    for n in FFN_NAMES:
        expect_dtype(f"ffn_block_backward's d{n}", grads32.get("d" + n))
    return note + "; float32 stays float32"


# =======================================================================================
# Chapter 7 — MLM / NSP heads and their losses
# =======================================================================================
def _ce_inputs():
    rng = fixed_rng(13)
    logits = rng.normal(0, 2, size=(7, 5))
    labels = rng.integers(0, 5, size=7)
    labels[[1, 4]] = IGNORE_INDEX                             # two rows are not predicted
    return logits, labels


def check_gather_masked(module):
    rng = fixed_rng(14)
    seq = rng.normal(size=(2, 6, 3))
    labels = np.full((2, 6), IGNORE_INDEX)
    labels[0, 2], labels[0, 5], labels[1, 1] = 7, 3, 9
    result = get_function(module, "gather_masked")(*frozen(seq, labels))
    if not (isinstance(result, tuple) and len(result) == 2):
        raise Wrong("gather_masked must return (rows (N, H), targets (N,))")
    rows, targets = result
    expect_close("gather_masked rows", rows, seq[[0, 0, 1], [2, 5, 1]], rtol=0, atol=0)
    expect_close("gather_masked targets", targets, np.array([7, 3, 9]), rtol=0, atol=0)
    expect_float32("gather_masked rows", get_function(module, "gather_masked")(*f32(seq, labels))[0])
    return "picks the labelled rows in row-major order"


ALL_IGNORED_HINT = ("if no row counts, the loss is 0 and its gradient is 0 (0 / 0 is NaN: divide by "
                    "max(n_counted, 1))")


def _all_ignored(module, what, logits):
    """cross_entropy_forward (and backward) with every label -100: loss 0, gradient 0, not NaN."""
    labels = np.full(len(logits), IGNORE_INDEX)
    try:
        with np.errstate(all="ignore"):
            loss, cache = call_pair(module, "cross_entropy_forward", *frozen(logits, labels))
            grad = get_function(module, "cross_entropy_backward")(freeze(cache)) if what == "backward" else None
    except ZeroDivisionError as e:
        raise Wrong(f"cross_entropy_{what} with every label -100 raised ZeroDivisionError ({e}): "
                    f"{ALL_IGNORED_HINT}") from None
    expect_close("cross_entropy_forward loss with every label -100", loss, 0.0, nonfinite=ALL_IGNORED_HINT)
    if grad is not None:
        expect_close("cross_entropy_backward with every label -100", grad, np.zeros_like(logits),
                     nonfinite=ALL_IGNORED_HINT)


def check_cross_entropy_forward(module):
    logits, labels = _ce_inputs()
    loss, _ = call_pair(module, "cross_entropy_forward", *frozen(logits, labels))
    want, _ = layers.cross_entropy_forward(logits, labels)
    valid = labels != IGNORE_INDEX
    all_rows = float(want) * valid.sum() / len(labels)
    expect_close("cross_entropy_forward loss", loss, want, variants={
        "the mean is over ALL rows; it must be over the rows whose label is not -100": all_rows})
    big = logits * 400.0                                        # exp(2000) overflows without the max shift
    with np.errstate(all="ignore"):
        loss_big, _ = call_pair(module, "cross_entropy_forward", *frozen(big, labels))
    expect_close("cross_entropy_forward loss on logits ~1000", loss_big, layers.cross_entropy_forward(big, labels)[0],
                 nonfinite=STABILITY_HINT)
    _all_ignored(module, "forward", logits)
    return "matches the reference, ignores -100 rows (all of them: loss 0), stable for logits ~1000"


def check_cross_entropy_backward(module):
    logits, labels = _ce_inputs()
    fwd, bwd = get_function(module, "cross_entropy_forward"), get_function(module, "cross_entropy_backward")
    _, cache = call_pair(module, "cross_entropy_forward", *frozen(logits, labels))
    dlogits = bwd(freeze(cache))
    note = expect_gradients("cross_entropy_backward", lambda: float(fwd(logits, labels)[0]),
                            {"logits": logits}, {"logits": dlogits}, hints={
                                "logits": "(softmax - onehot) / (number of counted rows) on counted rows, 0 on "
                                          "rows whose label is -100"})
    big = logits * 400.0
    with np.errstate(all="ignore"):
        _, cache = call_pair(module, "cross_entropy_forward", *frozen(big, labels))
        dbig = bwd(freeze(cache))
    expect_close("cross_entropy_backward on logits ~1000", dbig,
                 layers.cross_entropy_backward(1.0, layers.cross_entropy_forward(big, labels)[1]),
                 nonfinite=STABILITY_HINT)
    _all_ignored(module, "backward", logits)
    _, cache = call_pair(module, "cross_entropy_forward", *f32(logits, labels))
    expect_float32("cross_entropy_backward's dlogits", bwd(freeze(cache)))
    return note + "; stable for logits ~1000, 0 when every label is -100, float32 stays float32"
