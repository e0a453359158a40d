"""The Numba backend's ``split_heads_forward`` / ``split_heads_backward`` (reference: ``nn/heads.py``).

Forward: the fused Q/K/V projection's output ``y`` (B, T, P*nh*d), without its bias, becomes P contiguous
(B, nh, T, d) arrays with the bias added. Backward: the P gradients go back into one (B, T, P*nh*d) array, and
the bias's gradient (its row sum) is added up on the way. Each direction is one parallel pass over the batch
(``prange`` over sequences) that reads or writes each row of ``y`` once, every part at once, where NumPy makes
three or four passes on one core.

Both kernels index reshaped arrays with scalars, the innermost loop's own variable alone on the last axis (``y``
as (B*T, P, nh, d), the parts as (P*B*nh*T, d) or P tables of (B*nh*T, d)), so the inner loop runs along one
contiguous row on both sides and vectorises: a computed index on the last axis (``y[row, start + c]``) brings
Numba's negative-index check and stops the vectoriser. The parts are stacked in one array in the forward and
passed as three arguments in the backward (the last repeated when P = 2), so there is one compiled signature per
dtype whether P is 3 (every layer) or 2 (the last layer at the heads' rows).

Measured at the default job's size (B = 128, T = 64, 2 heads of 64; ``bert-from-scratch bench train-step --case
default-step --profile``, 2-vCPU AMD EPYC VM, 2026-12-07): the part "heads' split and stack" of the step went from
11.3 ms to 6.0 ms (both layers, forward and backward; an earlier version made one call per part, with a computed
index on the last axis in the backward). ``tests/test_heads.py`` compares both directions with the reference in
float32 and float64 and shows a planted bug is caught.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_math import FASTMATH

BUG_NONE = 0
BUG_BIAS_GRAD_ONE_ROW = 1      # planted: the bias gradient keeps the last position of each sequence only


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def split_kernel(y, bias, out, B, T):
    """y: (B*T, P, nh, d); bias: (P, nh, d); out: (P*B*nh*T, d), row ((j*B + b)*nh + h)*T + t = part j, head h of
    position t of sequence b, plus its bias."""
    n_parts, n_heads, d = bias.shape
    for b in prange(B):
        for t in range(T):
            row = b * T + t
            for j in range(n_parts):
                for h in range(n_heads):
                    dst = ((j * B + b) * n_heads + h) * T + t
                    for c in range(d):
                        out[dst, c] = y[row, j, h, c] + bias[j, h, c]


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def stack_kernel(g0, g1, g2, dy, dbias_parts, T, planted_bug):
    """g0, g1, g2: (B*nh*T, d) the parts' gradients, row (b*nh + h)*T + t (only the first P are read) -> dy:
    (B*T, P, nh, d); dbias_parts: (B, P, nh, d), for sequence b the sum over its T positions (in order) of each
    column."""
    B, n_parts, n_heads, d = dbias_parts.shape
    for b in prange(B):
        acc = dbias_parts[b]
        for j in range(n_parts):
            for h in range(n_heads):
                for c in range(d):
                    acc[j, h, c] = 0.0
        for t in range(T):
            row = b * T + t
            for j in range(n_parts):
                g = g0 if j == 0 else (g1 if j == 1 else g2)
                for h in range(n_heads):
                    src = (b * n_heads + h) * T + t
                    for c in range(d):
                        dy[row, j, h, c] = g[src, c]
                    if planted_bug == BUG_BIAS_GRAD_ONE_ROW and t < T - 1:
                        continue
                    for c in range(d):
                        acc[j, h, c] += g[src, c]


def split_heads_forward(y, bias, n_parts: int, n_heads: int):
    """y: (B, T, P*nh*d) without its bias, bias: (P*nh*d,) -> a tuple of P contiguous (B, nh, T, d) arrays."""
    y = np.ascontiguousarray(y)
    bias = np.ascontiguousarray(bias, dtype=y.dtype)
    B, T, width = y.shape
    d = width // (n_parts * n_heads)
    out = np.empty((n_parts, B, n_heads, T, d), y.dtype)
    split_kernel(y.reshape(B * T, n_parts, n_heads, d), bias.reshape(n_parts, n_heads, d), out.reshape(-1, d), B, T)
    return tuple(out[j] for j in range(n_parts))


def split_heads_backward(grads, planted_bug=BUG_NONE):
    """The P (2 or 3) parts' gradients, each (B, nh, T, d) -> (dy (B, T, P*nh*d), dbias (P*nh*d,))."""
    if len(grads) not in (2, 3):
        raise ValueError(f"split_heads_backward takes 2 or 3 parts; got {len(grads)}")
    dtype = grads[0].dtype
    B, nh, T, d = grads[0].shape
    tables = [np.ascontiguousarray(g, dtype=dtype).reshape(B * nh * T, d) for g in grads]
    dy = np.empty((B, T, len(grads) * nh * d), dtype)
    parts = np.empty((B, len(grads), nh, d), dtype)
    stack_kernel(tables[0], tables[1], tables[-1], dy.reshape(B * T, len(grads), nh, d), parts, T, planted_bug)
    return dy, parts.reshape(B, -1).sum(axis=0)
