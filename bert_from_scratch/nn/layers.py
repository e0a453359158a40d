r"""The building blocks of BERT, each a forward/backward pair written next to each other.

This is the readable reference: plain array code, no kernel calls. The fused Numba kernels
(``kernels/numba_layers.py``, ``kernels/numba_fused.py``) have the same signatures and are swapped in
as a whole by ``nn/backend.py`` when a model is built with ``backend="numba"`` (or "auto" on the CPU).

Conventions (after llm.c and numpy-ml):

- ``*_forward(...)`` returns ``(out, cache)``; the cache holds exactly what the backward needs.
- ``*_backward(dout, cache)`` returns the gradient of the input(s) and of the parameters.
- ``N`` is any number of leading dimensions (``B, T`` in BERT); ``C`` the feature size.
- Every function takes its array module from its inputs (``xp``), so it runs on NumPy or CuPy.
"""
from __future__ import annotations

import math

from ..constants import IGNORE_INDEX
from ..kernels.kernel_args import GOLDEN, dropout_threshold, mix32
from .blas_pair import matmul_pair
from .xp import erf, get_array_module, is_cupy_array


# ---------------------------------------------------------------------------------------
# Linear:  y = x W^T + b      (W is [out, in], as torch.nn.Linear / Hugging Face)
# ---------------------------------------------------------------------------------------
def linear_forward(x, weight, bias):
    """x: (N..., in), weight: (out, in), bias: (out,) or None  ->  y: (N..., out).

    The leading dimensions are flattened so BLAS sees one large (N, in) x (in, out) product:
    a stacked 3-D matmul is several times slower in NumPy. ``bias=None`` leaves the bias to a fused
    op that follows (``bias_gelu_forward``, ``bias_dropout_add_layernorm_forward``)."""
    x2 = x.reshape(-1, x.shape[-1])                 # (N, in)
    y = x2 @ weight.T                               # (N, out)
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], weight.shape[0]), (x2, weight, x.shape)


def linear_backward(dy, cache, bias=True):
    """dy: (N..., out) -> dx (N..., in), dweight (out, in), dbias (out,) (None when ``bias`` is False:
    a fused op gave it already)."""
    x2, weight, x_shape = cache
    # forward: y = x W^T + b
    dy2 = dy.reshape(-1, dy.shape[-1])              # (N, out)
    # dx = dy W (N, in) and dW = dy^T x (out, in): independent, so on 2 cores each gets one (nn/blas_pair.py)
    dx2, dweight = matmul_pair(dy2, weight, dy2.T, x2)
    dx = dx2.reshape(x_shape)                       # (N..., in)
    dbias = row_sum(dy2) if bias else None          # (out,)
    return dx, dweight, dbias


def linear_bias_in_product_forward(x, weight, bias):
    """The same ``y = x W^T + b`` as :func:`linear_forward`, with the bias folded into the product:
    ``[x | 1] (N, in+1)`` times ``[W | b]^T (in+1, out)``, one :func:`linear_forward` without a bias. One matmul
    writes ``y`` once, where ``y += b`` would read and write it again: for the MLM decoder's (1,229 x 8,000) logits
    that pass cost ~4 ms of a ~15 ms matmul (docs/performance.md). The copies of ``x`` and ``W`` it makes are small
    beside ``y`` when ``out`` is large, as for a vocabulary; for the encoder's layers (``out`` = 128-512) the plain
    form is the better one."""
    xp = get_array_module(x)
    n_in = weight.shape[1]
    x1 = xp.empty(x.shape[:-1] + (n_in + 1,), dtype=x.dtype)    # (N..., in+1): [x | 1]
    x1[..., :n_in] = x
    x1[..., n_in] = 1.0
    wb = xp.empty((weight.shape[0], n_in + 1), dtype=weight.dtype)  # (out, in+1): [W | b]
    wb[:, :n_in] = weight
    wb[:, n_in] = bias
    return linear_forward(x1, wb, None)                          # (N..., out), the bias included


def linear_bias_in_product_backward(dy, cache):
    """dy: (N..., out) -> dx (N..., in), dweight (out, in), dbias (out,), from :func:`linear_backward` of the
    product: ``d[W | b] = dy^T [x | 1]``, so the bias's gradient (the row sum of dy) is the last column of the
    weight's product, no pass of its own; the ones column's own gradient is dropped."""
    dx1, dwb, _ = linear_backward(dy, cache, bias=False)         # (N..., in+1), (out, in+1): [dW | db]
    n_in = dwb.shape[1] - 1
    xp = get_array_module(dy)
    # contiguous copies: the gradient dict keeps what it is given first, and kernels that later add into it
    # (the tied word embedding's scatter-add) compile one signature for C-contiguous arrays
    return (xp.ascontiguousarray(dx1[..., :n_in]), xp.ascontiguousarray(dwb[:, :n_in]),
            xp.ascontiguousarray(dwb[:, n_in]))


def row_sum(a):
    """a: (N, C) -> (C,), the sum over rows (a bias's gradient), as one BLAS matrix-vector product ``ones @ a``:
    on every core and 2-3x faster than NumPy's one-core ``a.sum(axis=0)`` on the decoder's (1,229 x 8,000)
    gradient (docs/performance.md); the same sum within float32 rounding."""
    xp = get_array_module(a)
    return xp.ones(a.shape[0], dtype=a.dtype) @ a


# ---------------------------------------------------------------------------------------
# GELU, the exact one:  gelu(x) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))
# ---------------------------------------------------------------------------------------
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_forward(x):
    """Exact (erf) GELU, as BERT and Hugging Face's ``hidden_act="gelu"``."""
    cdf = 0.5 * (1.0 + erf(x * x.dtype.type(_INV_SQRT2)))     # Phi(x)
    return x * cdf, (x, cdf)


def gelu_backward(dy, cache):
    """d/dx [x Phi(x)] = Phi(x) + x phi(x),  phi(x) = exp(-x^2/2) / sqrt(2 pi)."""
    x, cdf = cache
    xp = get_array_module(x)
    pdf = xp.exp(-0.5 * x * x) * x.dtype.type(_INV_SQRT_2PI)
    return dy * (cdf + x * pdf)


# ---------------------------------------------------------------------------------------
# LayerNorm over the last axis:  y = (x - mean) / sqrt(var + eps) * gamma + beta
# ---------------------------------------------------------------------------------------
def layernorm_forward(x, gamma, beta, eps=1e-12):
    """x: (N..., C) -> y: (N..., C). Biased variance, as torch and TensorFlow."""
    mean = x.mean(axis=-1, keepdims=True)                # (N..., 1)
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)         # (N..., 1)
    rstd = 1.0 / (var + x.dtype.type(eps)) ** 0.5        # (N..., 1)
    xhat = xc * rstd                                     # (N..., C)
    y = xhat * gamma + beta
    return y, (xhat, rstd, gamma)


def layernorm_backward(dy, cache):
    r"""dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),  dxhat = dy * gamma.

    The two mean terms come from the dependence of the mean and of the variance on every x.
    """
    xhat, rstd, gamma = cache
    C = xhat.shape[-1]
    dgamma = (dy * xhat).reshape(-1, C).sum(axis=0)      # (C,)
    dbeta = dy.reshape(-1, C).sum(axis=0)                # (C,)
    dxhat = dy * gamma                                   # (N..., C)
    dx = dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    dx *= rstd
    return dx, dgamma, dbeta


# ---------------------------------------------------------------------------------------
# Dropout (inverted): y = x * keep / (1 - p), keep ~ Bernoulli(1 - p)
# ---------------------------------------------------------------------------------------
def dropout_forward(x, p, rng, training=True, row_offset=0, row_ids=None):
    """Inverted dropout with a counter-hash mask, as the attention core's dropout.

    ``rng`` (a ``numpy.random.Generator``) draws one 32-bit seed per call; element ``i`` of the
    flattened ``x`` is kept when ``mix32(mix32(seed ^ GOLDEN) ^ (i + o)) >> 8 >= round(p * 2**24)``
    (mod 2**32), with ``o = row_offset * (elements per row of x)``: ``row_offset`` is the global row of
    ``x[0]`` when a data-parallel rank holds rows of a larger batch, so its masks are the whole batch's.
    ``row_ids`` (N,) ints, for ``x`` of shape (N, C) holding a gathered subset of a larger batch's rows:
    element (r, c) is keyed ``row_ids[r] * C + c`` instead, the index it has in the whole (flattened) batch, so
    the subset gets exactly the whole batch's mask at those rows (``model/blocks.py``: the last layer's rows).
    The mask is a function of (seed, index) only, so NumPy, the fused Numba kernel and CuPy make
    the same mask, and the fused kernel's backward regenerates it instead of storing it.
    """
    if not training or p == 0.0:
        return x, None
    seed = int(rng.integers(0, 2**32))
    threshold = dropout_threshold(p)
    scale = x.dtype.type(1.0 / (1.0 - p))
    xp = get_array_module(x)
    seed_h = mix32(xp.asarray([seed ^ GOLDEN], dtype=xp.uint32), xp)               # (1,)
    if row_ids is None:
        offset = (int(row_offset) * (x.size // max(x.shape[0], 1))) & 0xFFFFFFFF if x.ndim else 0
        index = (xp.arange(x.size, dtype=xp.uint32) + xp.uint32(offset)).reshape(x.shape)  # wraps mod 2**32
    else:                                                                                  # x: (N, C)
        C = x.shape[-1]
        index = ((xp.asarray(row_ids, dtype=xp.int64)[:, None] * C + xp.arange(C)) & 0xFFFFFFFF).astype(xp.uint32)
    keep = (mix32(index ^ seed_h[0], xp) >> xp.uint32(8)) >= xp.uint32(threshold)  # (N...,) bool
    return x * keep * scale, (keep, scale)


def dropout_backward(dy, cache):
    """dx = dy * keep / (1 - p), with the forward's mask."""
    if cache is None:
        return dy
    keep, scale = cache
    return dy * keep * scale


# ---------------------------------------------------------------------------------------
# Fused tails of the encoder blocks (one op each for a backend; here the pieces above, composed)
# ---------------------------------------------------------------------------------------
def bias_gelu_forward(h, bias):
    """g = gelu(h + bias): the FFN's first dense layer's bias, then GELU. h: (N..., C), bias: (C,)."""
    return gelu_forward(h + bias)


def bias_gelu_backward(dg, cache):
    """-> dh (N..., C), dbias (C,) = sum over rows of dh."""
    dh = gelu_backward(dg, cache)
    return dh, dh.reshape(-1, dh.shape[-1]).sum(axis=0)


def bias_dropout_add_layernorm_forward(o, bias, x, gamma, beta, p, rng, training=True, eps=1e-12, row_offset=0,
                                       row_ids=None):
    """y = LayerNorm(x + dropout(o + bias)): the end of BERT's attention and FFN blocks (``o`` the output
    dense layer's product without its bias, ``x`` the block's input). o, x: (N..., C) -> y (N..., C).
    ``row_offset``, ``row_ids``: the dropout mask's keys (see :func:`dropout_forward`)."""
    out, c_drop = dropout_forward(o + bias, p, rng, training, row_offset, row_ids)
    y, c_ln = layernorm_forward(x + out, gamma, beta, eps)
    return y, (c_ln, c_drop)          # every backend's cache: (its LayerNorm cache, its dropout cache)


def bias_dropout_add_layernorm_backward(dy, cache):
    """-> d_o (N..., C), d_x (N..., C) (the residual's share), dbias, dgamma, dbeta (C,)."""
    c_ln, c_drop = cache
    ds, dgamma, dbeta = layernorm_backward(dy, c_ln)         # s = x + dropout(o + b)
    do = dropout_backward(ds, c_drop)
    return do, ds, do.reshape(-1, do.shape[-1]).sum(axis=0), dgamma, dbeta


# ---------------------------------------------------------------------------------------
# Softmax over the last axis (used by the heads' losses; attention has its own core)
# ---------------------------------------------------------------------------------------
def softmax_forward(x):
    xp = get_array_module(x)
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    p = e / e.sum(axis=-1, keepdims=True)
    return p, p


def softmax_backward(dp, cache):
    """dx = p * (dp - sum(dp * p)): the row sum is the softmax's normalisation at work."""
    p = cache
    return p * (dp - (dp * p).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------------------
# Cross-entropy with an ignore index, mean over the counted rows (torch's default)
# ---------------------------------------------------------------------------------------
def cross_entropy_forward(logits, labels, ignore_index=IGNORE_INDEX):
    """logits: (N, K), labels: (N,) ints, ``ignore_index`` rows don't count.

    loss = mean over counted rows of  logsumexp(logits_i) - logits_i[label_i].
    Returns (loss as a 0-d array, cache). A batch with no counted row has loss 0.
    """
    xp = get_array_module(logits)
    valid = labels != ignore_index                            # (N,)
    n_valid = int(valid.sum())
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logsumexp = xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))
    log_probs = shifted - logsumexp                           # (N, K)
    safe_labels = xp.where(valid, labels, 0)
    picked = xp.take_along_axis(log_probs, safe_labels[:, None], axis=-1)[:, 0]   # (N,)
    loss = -(picked * valid).sum() / max(n_valid, 1)
    return loss, (log_probs, safe_labels, valid, n_valid)


def cross_entropy_backward(dloss, cache):
    """d loss / d logits = (softmax(logits) - onehot(label)) / n_valid on counted rows, else 0."""
    log_probs, safe_labels, valid, n_valid = cache
    xp = get_array_module(log_probs)
    dlogits = xp.exp(log_probs)
    rows = xp.arange(dlogits.shape[0])
    dlogits[rows, safe_labels] -= 1.0
    dlogits *= (valid[:, None] * (float(dloss) / max(n_valid, 1))).astype(dlogits.dtype)
    return dlogits


# ---------------------------------------------------------------------------------------
# Embedding lookup:  y = W[ids];  its backward is a scatter-add into the table's rows
# ---------------------------------------------------------------------------------------
def embedding_forward(ids, weight):
    """ids: (N...) ints, weight: (V, C) -> (N..., C)."""
    return weight[ids], embedding_cache(ids, weight)


def embedding_cache(ids, weight):
    """What :func:`embedding_backward` needs of a lookup: the ids and the table's shape (also for lookups made
    elsewhere, as the backends' ``embedding_sum``)."""
    return ids, weight.shape


def embedding_backward(dy, cache):
    """dW[v] = sum of dy over every position whose id is v (a repeated id gets the SUM)."""
    ids, shape = cache
    xp = get_array_module(dy)
    dweight = xp.zeros(shape, dtype=dy.dtype)
    scatter_add_rows(dweight, ids.reshape(-1), dy.reshape(-1, shape[1]))
    return dweight


def embedding_sum(ids, token_type_ids, word, token_type, position):
    """BERT's input embedding before its LayerNorm: ``word[ids] + token_type[token_type_ids] + position[:T]``.
    ids, token_type_ids: (B, T) valid ids (the model checks them); tables (V, H), (n_types, H), (max_len, H) ->
    (B, T, H). Three lookups summed (word + type first, then the positions); the backward of each lookup is
    :func:`embedding_backward`'s scatter-add (``model/blocks.py: embeddings_backward``)."""
    x = word[ids] + token_type[token_type_ids]                  # (B, T, H)
    x += position[:ids.shape[1]]                                # (T, H) broadcast
    return x


def scatter_add_rows(target, rows, values):
    """target[rows[i]] += values[i] for every i, with repeats accumulated (unlike target[rows] += ...)."""
    if is_cupy_array(target):
        import cupy  # type: ignore

        if hasattr(cupy.add, "at"):          # CuPy >= 13
            cupy.add.at(target, rows, values)
        else:  # pragma: no cover - older CuPy
            import cupyx  # type: ignore
            cupyx.scatter_add(target, rows, values)
    else:
        import numpy as np

        np.add.at(target, rows, values)


# ---------------------------------------------------------------------------------------
# tanh (the pooler's activation)
# ---------------------------------------------------------------------------------------
def tanh_forward(x):
    xp = get_array_module(x)
    y = xp.tanh(x)
    return y, y


def tanh_backward(dy, cache):
    y = cache
    return dy * (1.0 - y * y)


# ---------------------------------------------------------------------------------------
# Mean over the real tokens (Sentence-BERT's pooling):  y_b = sum_t m_bt x_bt / sum_t m_bt
# ---------------------------------------------------------------------------------------
def masked_mean_forward(x, mask):
    """x: (B, T, C), mask: (B, T) of 0/1 (the attention mask: 1 = a real token) or None (all real) -> y: (B, C), the
    mean of each sequence's real positions; [PAD] positions count for nothing. A sequence with no real token is
    refused (its mean would be 0/0)."""
    xp = get_array_module(x)
    m = xp.ones(x.shape[:2], dtype=x.dtype) if mask is None else xp.asarray(mask).astype(x.dtype)      # (B, T)
    if m.shape != x.shape[:2]:
        raise ValueError(f"attention_mask has shape {tuple(m.shape)}; expected {tuple(x.shape[:2])}")
    count = m.sum(axis=1, keepdims=True)                         # (B, 1)
    if bool((count == 0).any()):
        raise ValueError("a sequence has no real tokens (its attention_mask is all zeros)")
    m = m[:, :, None]                                            # (B, T, 1)
    return (x * m).sum(axis=1) / count, (m, count)


def masked_mean_backward(dy, cache):
    """dy: (B, C) -> dx: (B, T, C); each real position gets dy / count, a padded one 0."""
    m, count = cache
    return (dy / count)[:, None, :] * m                          # (B, 1, C) * (B, T, 1)
