"""Fused Numba kernels for the elementwise work around the matmuls: GELU, LayerNorm, dropout, embedding scatter-add.

NumPy runs elementwise ops on one core and writes a temporary array per operation; these kernels
make one parallel pass instead. They compute what the NumPy code in ``bert_from_scratch/layers.py``
computes (that code stays the readable reference, and is what runs on CuPy); ``layers.py`` calls
them for contiguous float32/float64 NumPy arrays when Numba is installed, and
``tests/test_layers.py`` checks every one against the reference and shows a planted bug is caught.

Numba has no vectorised ``erf`` or ``exp`` without Intel's SVML, and ``math.erf`` is a libm call
per element (~8 ns). So in float32 the GELU uses two vectorisable pieces written out here:

- ``erf`` by the odd/even rational approximation ``erf(x) ~ x P(x^2) / Q(x^2)`` on ``[-4, 4]``
  (clamped outside, where float32 erf is +-1), the approximation TensorFlow's and Eigen's float32
  ``erf`` use. Measured against ``math.erf`` on a 2-million-point grid over ``[-8, 8]``: max absolute
  error 4.4e-7, i.e. a few float32 ulps (``tests/test_layers.py`` asserts < 1e-6). This is still the
  exact (erf) GELU to float32 precision: the tanh approximation differs by up to 4.7e-4.
- ``exp`` for ``phi(x) = exp(-x^2/2)/sqrt(2 pi)`` in the backward: the range-reduction + polynomial
  ``fast_exp`` of ``numba_math.py`` (error ~1 ulp).

float64 (the gradient checks) keeps ``math.erf`` in the forward; its backward uses the float64 variant
of ``fast_exp`` (a degree-13 polynomial, about 1 ulp), far inside the checks' 1e-7 tolerance.

Measured on the 2-vCPU development VM, float32, median of 20 calls, fused vs the NumPy reference:
GELU forward 3.8 vs 59 ms and backward 2.6 vs 13 ms on (8192, 512) (the tiny model's FFN at B=128,
T=64); LayerNorm forward 0.2 vs 2.4 ms and backward 0.2 vs 3.1 ms on (8192, 128); dropout 0.5 ms on
(128, 64, 128), against 3.3 ms for the NumPy-generator mask it replaced. Chapter 10 times the GELU
both ways in a cell you can run.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from .kernel_args import seed_hash
from .numba_math import FASTMATH, fast_exp, mix32

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

#: elements per parallel chunk (16 KiB of float32: the chunk and its scratch stay in L1)
CHUNK = 4096

# erf(x) ~ x * P(x^2) / Q(x^2) on [-4, 4]: numerator (odd) and denominator (even) coefficients
_ERF_P = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04, -5.69250639462346e-05,
          -2.10102402082508e-06, 2.77068142495902e-08, -2.72614225801306e-10)
_ERF_Q = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03, -2.13374055278905e-04,
          -1.45660718464996e-05)
P0, P1, P2, P3, P4, P5, P6 = (np.float32(c) for c in _ERF_P)
Q0, Q1, Q2, Q3, Q4 = (np.float32(c) for c in _ERF_Q)

#: planted bugs, for tests that prove the comparison with the reference rejects a wrong kernel
BUG_NONE = 0
BUG_GELU_NO_PDF_TERM = 1       # GELU backward forgets the x * phi(x) term: d/dx = Phi(x) only
BUG_LAYERNORM_NO_MEAN_TERM = 2  # LayerNorm backward forgets the mean(dxhat) term
BUG_EMBEDDING_FIRST_POSITION = 3  # the embedding sum adds position 0's vector at every position


@njit(inline="always", fastmath=FASTMATH, cache=True)
def erf_f32(x):
    """float32 erf by the rational approximation above (vectorisable: no calls, no branches)."""
    x = min(max(x, np.float32(-4.0)), np.float32(4.0))
    x2 = x * x
    p = P6
    p = p * x2 + P5
    p = p * x2 + P4
    p = p * x2 + P3
    p = p * x2 + P2
    p = p * x2 + P1
    p = p * x2 + P0
    q = Q4
    q = q * x2 + Q3
    q = q * x2 + Q2
    q = q * x2 + Q1
    q = q * x2 + Q0
    return x * p / q


def erf_float32(x):
    """``erf`` of a float32 array with the kernel's approximation (for tests and readers)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    _erf_kernel(x.reshape(-1), out.reshape(-1))
    return out


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def _erf_kernel(x, out):
    for i in prange(x.size):
        out[i] = erf_f32(x[i])


# ---------------------------------------------------------------------------------------
# GELU:  y = x Phi(x),  dy/dx = Phi(x) + x phi(x)
# ---------------------------------------------------------------------------------------
@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gelu_forward_kernel(x, out, cdf):
    """out = x * Phi(x), cdf = Phi(x) = 0.5 (1 + erf(x / sqrt 2)); flat arrays of one dtype."""
    n = x.size
    if x.itemsize == 4:
        half = np.float32(0.5)
        inv_sqrt2 = np.float32(_INV_SQRT2)
        for c in prange((n + CHUNK - 1) // CHUNK):
            start = c * CHUNK
            stop = min(n, start + CHUNK)
            # slice first, then index with the loop variable: a computed index (x[start + i])
            # brings Numba's negative-index check, which stops LLVM's vectoriser
            xs, cdfs, outs = x[start:stop], cdf[start:stop], out[start:stop]
            for i in range(stop - start):
                phi_cdf = half + half * erf_f32(xs[i] * inv_sqrt2)
                cdfs[i] = phi_cdf
                outs[i] = xs[i] * phi_cdf
    else:
        for i in prange(n):
            phi_cdf = 0.5 * (1.0 + math.erf(x[i] * _INV_SQRT2))
            cdf[i] = phi_cdf
            out[i] = x[i] * phi_cdf


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def gelu_backward_kernel(dy, x, cdf, dx, planted_bug):
    """dx = dy * (Phi(x) + x phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi); flat arrays."""
    n = x.size
    dt = x.dtype
    inv_sqrt_2pi = dt.type(_INV_SQRT_2PI)
    pdf_weight = dt.type(0.0) if planted_bug == BUG_GELU_NO_PDF_TERM else dt.type(1.0)
    for c in prange((n + CHUNK - 1) // CHUNK):
        start = c * CHUNK
        stop = min(n, start + CHUNK)
        xs, dys, cdfs, dxs = x[start:stop], dy[start:stop], cdf[start:stop], dx[start:stop]
        for i in range(stop - start):
            pdf = fast_exp(dt.type(-0.5) * xs[i] * xs[i]) * inv_sqrt_2pi      # phi(x), vectorised
            dxs[i] = dys[i] * (cdfs[i] + pdf_weight * xs[i] * pdf)


# ---------------------------------------------------------------------------------------
# LayerNorm over the last axis of a (N, C) array
# ---------------------------------------------------------------------------------------
@njit(inline="always", fastmath=FASTMATH, cache=True)
def normalize_row(xh, mean, gamma, beta, eps, out):
    """One row's LayerNorm, given the row in ``xh`` (C,) and its mean: ``xh`` becomes x-hat (centred, then
    divided by the standard deviation of the centred row: no E[x^2] - E[x]^2 cancellation), ``out`` gets
    ``gamma * xhat + beta``; returns 1/std. Shared by the plain LayerNorm and the fused residual tail."""
    C = xh.shape[0]
    var = xh.dtype.type(0.0)
    for c in range(C):
        centred = xh[c] - mean
        xh[c] = centred
        var += centred * centred
    var *= xh.dtype.type(1.0 / C)
    inv_std = xh.dtype.type(1.0) / np.sqrt(var + eps)
    for c in range(C):
        xh[c] *= inv_std
        out[c] = xh[c] * gamma[c] + beta[c]
    return inv_std


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def layernorm_forward_kernel(x, gamma, beta, eps, y, xhat, rstd):
    """x, y, xhat: (N, C); gamma, beta: (C,); rstd: (N,). Two passes per row (mean, then variance
    of the centred row: the same numerics as the reference)."""
    N, C = x.shape
    dt = x.dtype
    eps = dt.type(eps)
    inv_c = dt.type(1.0 / C)
    for r in prange(N):
        row, xh = x[r], xhat[r]
        mean = dt.type(0.0)
        for c in range(C):
            xh[c] = row[c]
            mean += row[c]
        rstd[r] = normalize_row(xh, mean * inv_c, gamma, beta, eps, y[r])


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def layernorm_backward_kernel(dy, xhat, rstd, gamma, dx, dgamma_parts, dbeta_parts, planted_bug):
    """dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = dy gamma; (N, C) arrays.

    dgamma = sum_rows dy xhat and dbeta = sum_rows dy are reduced over rows: each parallel task
    sums its own block of rows into its own row of ``*_parts`` (n_tasks, C), added up by the caller
    (no two threads write the same memory)."""
    N, C = dy.shape
    dt = dy.dtype
    inv_c = dt.type(1.0 / C)
    n_tasks = dgamma_parts.shape[0]
    rows_per_task = (N + n_tasks - 1) // n_tasks
    mean_weight = dt.type(0.0) if planted_bug == BUG_LAYERNORM_NO_MEAN_TERM else dt.type(1.0)
    for t in prange(n_tasks):
        dg, db = dgamma_parts[t], dbeta_parts[t]
        for c in range(C):
            dg[c] = 0.0
            db[c] = 0.0
        for r in range(t * rows_per_task, min(N, (t + 1) * rows_per_task)):
            layernorm_row_backward(dy[r], xhat[r], gamma, rstd[r], mean_weight, inv_c, dx[r], dg, db)


@njit(inline="always", fastmath=FASTMATH, cache=True)
def layernorm_row_backward(g, xh, gamma, inv_std, mean_weight, inv_c, d, dg, db):
    """One row (C,) of the LayerNorm backward: ``d = inv_std (dxhat - mean(dxhat) - xh mean(dxhat xh))`` with
    ``dxhat = g gamma``; adds the row's terms to ``dg`` (dgamma) and ``db`` (dbeta). ``mean_weight`` is 1 (0 for
    a planted bug). Shared by the plain LayerNorm backward and the fused residual tail's."""
    dt = g.dtype
    sum_dxhat = dt.type(0.0)
    sum_dxhat_xhat = dt.type(0.0)
    for c in range(g.shape[0]):
        dxhat = g[c] * gamma[c]
        sum_dxhat += dxhat
        sum_dxhat_xhat += dxhat * xh[c]
        dg[c] += g[c] * xh[c]
        db[c] += g[c]
    mean_dxhat = mean_weight * sum_dxhat * inv_c
    mean_dxhat_xhat = sum_dxhat_xhat * inv_c
    for c in range(g.shape[0]):
        d[c] = (g[c] * gamma[c] - mean_dxhat - xh[c] * mean_dxhat_xhat) * inv_std


def layernorm_backward_tasks(n_rows: int) -> int:
    """How many row blocks the backward splits into: a few per thread, at least 64 rows each."""
    return max(1, min(4 * numba.get_num_threads(), n_rows // 64))


# ---------------------------------------------------------------------------------------
# Dropout: y = x * keep / (1 - p), keep_i = mix32(mix32(seed ^ GOLDEN) ^ i) >> 8 >= threshold
# ---------------------------------------------------------------------------------------
def dropout_seed_hash(seed: int) -> int:
    """``mix32(seed ^ GOLDEN)``, the per-call part of the hash (as the attention kernel's)."""
    return seed_hash(seed)


@njit(parallel=True, cache=True)
def dropout_kernel(x, seed_h, threshold, scale, y, offset):
    """y = x * keep * scale on flat arrays; the same kernel is the forward (x) and the backward (dy):
    the mask is recomputed from (seed, index + offset), never stored (offset: see ``dropout_forward``)."""
    n = x.size
    dt = x.dtype
    scale = dt.type(scale)
    zero = dt.type(0.0)
    for c in prange((n + CHUNK - 1) // CHUNK):
        start = c * CHUNK
        stop = min(n, start + CHUNK)
        xs, ys = x[start:stop], y[start:stop]
        for i in range(stop - start):
            keep = (mix32(seed_h ^ ((offset + start + i) & 0xFFFFFFFF)) >> 8) >= threshold
            ys[i] = xs[i] * scale if keep else zero


# ---------------------------------------------------------------------------------------
# Embedding sum: x[b, t] = word[ids[b, t]] + types[tt[b, t]] + position[t]
# ---------------------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def embedding_sum_kernel(ids, token_type_ids, word, types, position, out, planted_bug):
    """ids, token_type_ids: (B, T) int64; word, types, position: (n, C) tables; out: (B*T, C). One parallel pass,
    where NumPy makes two gathers and two adds on one core (the same two float adds, in the same order)."""
    B, T = ids.shape
    C = out.shape[1]
    for r in prange(B * T):
        b = r // T
        t = r - b * T
        w = ids[b, t]
        y = token_type_ids[b, t]
        p = 0 if planted_bug == BUG_EMBEDDING_FIRST_POSITION else t
        for c in range(C):
            out[r, c] = (word[w, c] + types[y, c]) + position[p, c]


# ---------------------------------------------------------------------------------------
# Embedding backward: dW[ids[i]] += dy[i]
# ---------------------------------------------------------------------------------------
@njit(cache=True)
def scatter_add_rows_kernel(target, rows, values):
    """target[rows[i], :] += values[i, :] for every i, repeats accumulated (one thread: the rows
    of a batch repeat, so parallel writers would race; this is ~1 ns per element already)."""
    C = target.shape[1]
    for i in range(rows.shape[0]):
        dst = target[rows[i]]
        src = values[i]
        for c in range(C):
            dst[c] += src[c]


def usable(*arrays) -> bool:
    """The kernels take contiguous float32/float64 NumPy arrays."""
    return all(isinstance(a, np.ndarray) and a.dtype in (np.float32, np.float64) and a.flags.c_contiguous
               for a in arrays)
