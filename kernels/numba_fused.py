"""Fused Numba kernels for the two elementwise tails of an encoder layer (the Numba backend's versions
of ``nn/layers.py``'s ``bias_gelu_*`` and ``bias_dropout_add_layernorm_*``).

At hidden size 128 the matmuls of a layer are small, and every extra pass over a (B*T, C) activation
costs about as much as a small matmul. The reference runs each tail as four to five NumPy passes on
one core, plus a temporary per pass; here each is one parallel pass over the rows:

- ``bias_gelu``: ``g = gelu(h + b)`` (the FFN's first dense layer without its bias add, then GELU).
  The forward writes ``g`` alone and keeps ``h`` (the matmul's output, which exists anyway) and ``b``;
  the backward recomputes ``h + b``, ``Phi`` and ``phi`` (a few flops, cheaper than writing a
  (B*T, 4H) array in the forward and reading it back) and returns ``dh`` together with the bias
  gradient ``db = sum_rows dh``.
- ``bias_dropout_add_layernorm``: ``y = LayerNorm(x + dropout(o + b))`` (the end of the attention
  and FFN blocks: output dense without its bias add, dropout, residual, LayerNorm). The dropout mask
  is the reference's counter hash of (seed, flat index + row offset), regenerated in the backward,
  so it is bit-identical to ``nn/layers.py``'s ``dropout_forward`` with the same ``rng``. The backward
  returns ``d(o)`` (through the mask), ``d(x)`` (the residual's share, the LayerNorm's input
  gradient), and ``db``, ``dgamma``, ``dbeta``.

Row-sum gradients (``db``, ``dgamma``, ``dbeta``) are reduced as in ``numba_elementwise``'s LayerNorm
backward: each parallel task sums its block of rows into its own row of a ``parts`` array, which the
caller adds up. ``tests/test_fused_ops.py`` compares every output with the reference twins in float32
and float64, gradient-checks both in float64 and shows that a planted bug is caught.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from .kernel_args import dropout_threshold
from .numba_elementwise import erf_f32, layernorm_backward_tasks, layernorm_row_backward, normalize_row
from .numba_math import FASTMATH, fast_exp, mix32
from . import numba_elementwise as ew
from .numba_layers import HashDropoutCache

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

#: planted bugs, for tests that prove the comparison with the reference rejects a wrong kernel
BUG_NONE = 0
BUG_GELU_NO_PDF_TERM = 1        # bias-GELU backward forgets the x phi(x) term
BUG_DROPOUT_GRAD_UNMASKED = 2   # residual-LayerNorm backward passes d(o) without the dropout mask


# ---------------------------------------------------------------------------------------
# bias + GELU:  hb = h + b,  g = hb Phi(hb);  dh = dg (Phi(hb) + hb phi(hb)),  db = sum_rows dh
# ---------------------------------------------------------------------------------------
@njit(parallel=True, fastmath=FASTMATH, cache=True)
def bias_gelu_forward_kernel(h, bias, g):
    """h, g: (N, C); bias: (C,). g = gelu(h + bias)."""
    N, C = h.shape
    dt = h.dtype
    half = dt.type(0.5)
    inv_sqrt2 = dt.type(_INV_SQRT2)
    for r in prange(N):
        hr, gr = h[r], g[r]
        if h.itemsize == 4:
            for c in range(C):
                v = hr[c] + bias[c]
                gr[c] = v * (half + half * erf_f32(v * inv_sqrt2))
        else:
            for c in range(C):
                v = hr[c] + bias[c]
                gr[c] = v * (half + half * math.erf(v * inv_sqrt2))


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def bias_gelu_backward_kernel(dg, h, bias, dh, dbias_parts, planted_bug):
    """dg, h, dh: (N, C); bias: (C,); dbias_parts: (n_tasks, C), each task's sum of dh over its block of rows."""
    N, C = dg.shape
    dt = dg.dtype
    half = dt.type(0.5)
    inv_sqrt2 = dt.type(_INV_SQRT2)
    inv_sqrt_2pi = dt.type(_INV_SQRT_2PI)
    pdf_weight = dt.type(0.0) if planted_bug == BUG_GELU_NO_PDF_TERM else dt.type(1.0)
    n_tasks = dbias_parts.shape[0]
    rows_per_task = (N + n_tasks - 1) // n_tasks
    for t in prange(n_tasks):
        part = dbias_parts[t]
        for c in range(C):
            part[c] = 0.0
        for r in range(t * rows_per_task, min(N, (t + 1) * rows_per_task)):
            hs, dgs, dhs = h[r], dg[r], dh[r]
            if dg.itemsize == 4:                # Phi(x) recomputed: float32 rational erf, vectorised
                for c in range(C):
                    x = hs[c] + bias[c]
                    cdf = half + half * erf_f32(x * inv_sqrt2)
                    pdf = fast_exp(dt.type(-0.5) * x * x) * inv_sqrt_2pi
                    d = dgs[c] * (cdf + pdf_weight * x * pdf)
                    dhs[c] = d
                    part[c] += d
            else:
                for c in range(C):
                    x = hs[c] + bias[c]
                    cdf = half + half * math.erf(x * inv_sqrt2)
                    pdf = fast_exp(dt.type(-0.5) * x * x) * inv_sqrt_2pi
                    d = dgs[c] * (cdf + pdf_weight * x * pdf)
                    dhs[c] = d
                    part[c] += d


class BiasGeluCache(NamedTuple):
    h: np.ndarray                   # (N..., C): the input, without the bias
    bias: np.ndarray                # (C,)


def _rows(a, dtype):
    a = np.ascontiguousarray(a, dtype=dtype)
    return a, a.reshape(-1, a.shape[-1])


def bias_gelu_forward(h, bias):
    """g = gelu(h + bias), exact (erf) GELU; h: (N..., C), bias: (C,) -> (g, cache)."""
    h, h2 = _rows(h, h.dtype)
    bias = np.ascontiguousarray(bias, dtype=h.dtype)
    g = np.empty_like(h)
    bias_gelu_forward_kernel(h2, bias, g.reshape(h2.shape))
    return g, BiasGeluCache(h, bias)


def bias_gelu_backward(dg, cache: BiasGeluCache, planted_bug=BUG_NONE):
    """-> dh (N..., C), dbias (C,)."""
    h = cache.h
    C = h.shape[-1]
    dg, dg2 = _rows(dg, h.dtype)
    dh = np.empty_like(h)
    parts = np.empty((layernorm_backward_tasks(dg2.shape[0]), C), h.dtype)
    bias_gelu_backward_kernel(dg2, h.reshape(-1, C), cache.bias, dh.reshape(-1, C), parts, planted_bug)
    return dh, parts.sum(axis=0)


# ---------------------------------------------------------------------------------------
# bias + dropout + residual + LayerNorm:  s = x + dropout(o + b),  y = LayerNorm(s)
# ---------------------------------------------------------------------------------------
@njit(inline="always", cache=True)
def _keep(seed_h, threshold, index):
    return (mix32(seed_h ^ (index & 0xFFFFFFFF)) >> 8) >= threshold


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def residual_layernorm_forward_kernel(o, bias, x, gamma, beta, eps, dropout, seed_h, threshold, scale, offset,
                                      row_ids, y, xhat, rstd):
    """o, x, y, xhat: (N, C); bias, gamma, beta: (C,); rstd: (N,). With ``dropout`` False no mask is applied.
    Two passes per row for the statistics (mean, then variance of the centred row), as the reference.
    The mask's hash index of element (r, c) is ``offset + r * C + c``, or ``row_ids[r] * C + c`` when ``row_ids``
    (N,) is not empty (the rows are a gathered subset, each keyed by its global row)."""
    N, C = o.shape
    by_id = row_ids.shape[0] > 0
    dt = o.dtype
    eps = dt.type(eps)
    scale = dt.type(scale)
    zero = dt.type(0.0)
    inv_c = dt.type(1.0 / C)
    for r in prange(N):
        orow, xrow, xh, out = o[r], x[r], xhat[r], y[r]
        base = row_ids[r] * C if by_id else offset + r * C
        mean = dt.type(0.0)
        for c in range(C):
            v = orow[c] + bias[c]
            if dropout:
                v = v * scale if _keep(seed_h, threshold, base + c) else zero
            s = xrow[c] + v
            xh[c] = s
            mean += s
        rstd[r] = normalize_row(xh, mean * inv_c, gamma, beta, eps, out)


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def residual_layernorm_backward_kernel(dy, xhat, rstd, gamma, dropout, seed_h, threshold, scale, offset,
                                       row_ids, ds, do, parts, planted_bug):
    """ds = LayerNorm backward (the residual's gradient), do = ds * mask * scale; (N, C) arrays.
    parts: (3, n_tasks, C), each task's row sums of dy * xhat (dgamma), dy (dbeta) and do (dbias).
    ``offset``, ``row_ids``: the forward's."""
    N, C = dy.shape
    by_id = row_ids.shape[0] > 0
    dt = dy.dtype
    scale = dt.type(scale)
    zero = dt.type(0.0)
    one = dt.type(1.0)
    inv_c = dt.type(1.0 / C)
    n_tasks = parts.shape[1]
    rows_per_task = (N + n_tasks - 1) // n_tasks
    masked = dropout and planted_bug != BUG_DROPOUT_GRAD_UNMASKED
    for t in prange(n_tasks):
        dg, dbeta, dbias = parts[0, t], parts[1, t], parts[2, t]
        for c in range(C):
            dg[c] = 0.0
            dbeta[c] = 0.0
            dbias[c] = 0.0
        for r in range(t * rows_per_task, min(N, (t + 1) * rows_per_task)):
            dsr, dor = ds[r], do[r]
            layernorm_row_backward(dy[r], xhat[r], gamma, rstd[r], one, inv_c, dsr, dg, dbeta)
            base = row_ids[r] * C if by_id else offset + r * C
            for c in range(C):
                d = dsr[c]
                if masked:
                    d = d * scale if _keep(seed_h, threshold, base + c) else zero
                elif dropout:
                    d = d * scale
                dor[c] = d
                dbias[c] += d


class ResidualLayerNormCache(NamedTuple):
    layernorm: tuple        # (xhat (N..., C), rstd (N..., 1), gamma (C,)): numba_layers.layernorm_backward's cache
    dropout: object         # numba_layers.HashDropoutCache, or None (no dropout)


def bias_dropout_add_layernorm_forward(o, bias, x, gamma, beta, p, rng, training=True, eps=1e-12, row_offset=0,
                                       row_ids=None):
    """y = LayerNorm(x + dropout(o + bias)); o, x: (N..., C). Draws the dropout seed from ``rng`` exactly when
    the reference does (training and p > 0), so the masks of both are the same (``row_ids`` too: see the
    reference, ``nn/layers.py``)."""
    dt = o.dtype
    o, o2 = _rows(o, dt)
    x, x2 = _rows(x, dt)
    drop = None
    if training and p != 0.0:
        seed = int(rng.integers(0, 2**32))
        offset = (int(row_offset) * (o.size // max(o.shape[0], 1))) & 0xFFFFFFFF
        ids = _NO_IDS if row_ids is None else np.ascontiguousarray(row_ids, dtype=np.int64).reshape(-1)
        drop = HashDropoutCache(ew.dropout_seed_hash(seed), dropout_threshold(p), dt.type(1.0 / (1.0 - p)), offset,
                                ids)
    y, xhat = np.empty_like(o), np.empty_like(o)
    rstd = np.empty(o.shape[:-1] + (1,), dt)
    gamma = np.ascontiguousarray(gamma, dtype=dt)
    residual_layernorm_forward_kernel(o2, np.ascontiguousarray(bias, dtype=dt), x2, gamma,
                                      np.ascontiguousarray(beta, dtype=dt), eps, *_mask_args(drop, dt),
                                      y.reshape(o2.shape), xhat.reshape(o2.shape), rstd.reshape(-1))
    return y, ResidualLayerNormCache((xhat, rstd, gamma), drop)


_NO_IDS = np.empty(0, np.int64)


def _mask_args(drop, dtype):
    """The kernels' dropout arguments: (dropout?, seed hash, threshold, scale, offset, row_ids). Without dropout the
    unused scale has the data's dtype, as with it: one compiled signature per dtype, not two."""
    if drop is None:
        return False, 0, 0, dtype.type(1.0), 0, _NO_IDS
    return True, drop.seed_hash, drop.threshold, drop.scale, drop.offset, drop.row_ids


def bias_dropout_add_layernorm_backward(dy, cache: ResidualLayerNormCache, planted_bug=BUG_NONE):
    """-> d_o (N..., C), d_x (N..., C), dbias (C,), dgamma (C,), dbeta (C,)."""
    (xhat, rstd, gamma), drop = cache
    C = xhat.shape[-1]
    dy, dy2 = _rows(dy, xhat.dtype)
    ds, do = np.empty_like(xhat), np.empty_like(xhat)
    parts = np.empty((3, layernorm_backward_tasks(dy2.shape[0]), C), xhat.dtype)
    residual_layernorm_backward_kernel(dy2, xhat.reshape(-1, C), rstd.reshape(-1), gamma, *_mask_args(drop, xhat.dtype),
                                       ds.reshape(-1, C), do.reshape(-1, C), parts, planted_bug)
    sums = parts.sum(axis=1)                                                         # (3, C)
    return do, ds, sums[2], sums[0], sums[1]
