"""The Numba backend's layer functions: the signatures of ``bert_from_scratch/nn/layers.py``, fused kernels inside.

``nn/backend.py`` puts these in place of the NumPy reference when a model runs with
``backend="numba"`` (or ``"auto"`` on the CPU). Each function computes what its reference twin
computes, in one parallel pass (``numba_elementwise.py``), and returns a cache that only its own
backward reads. Inputs are made contiguous in the model's dtype first, so any NumPy array works.
``tests/test_layers.py`` compares every function here with the reference, float32 and float64,
and shows that a planted bug in a kernel is caught.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import numba_elementwise as ew
from .kernel_args import dropout_threshold


def _flat(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype)


# ---- GELU ----------------------------------------------------------------------------------------
def gelu_forward(x):
    """y = x Phi(x), exact erf GELU. x: (N..., C) -> (y, (x, Phi(x)))."""
    x = _flat(x, x.dtype)
    y, cdf = np.empty_like(x), np.empty_like(x)
    ew.gelu_forward_kernel(x.reshape(-1), y.reshape(-1), cdf.reshape(-1))
    return y, (x, cdf)


def gelu_backward(dy, cache, planted_bug=ew.BUG_NONE):
    """dx = dy (Phi(x) + x phi(x))."""
    x, cdf = cache
    dy = _flat(dy, x.dtype)
    dx = np.empty_like(x)
    ew.gelu_backward_kernel(dy.reshape(-1), x.reshape(-1), cdf.reshape(-1), dx.reshape(-1), planted_bug)
    return dx


# ---- LayerNorm -----------------------------------------------------------------------------------
def layernorm_forward(x, gamma, beta, eps=1e-12):
    """x: (N..., C) -> (y, (xhat, rstd, gamma)), the reference's cache layout."""
    x = _flat(x, x.dtype)
    gamma, beta = _flat(gamma, x.dtype), _flat(beta, x.dtype)
    C = x.shape[-1]
    y, xhat = np.empty_like(x), np.empty_like(x)
    rstd = np.empty(x.shape[:-1] + (1,), x.dtype)                                      # (N..., 1)
    ew.layernorm_forward_kernel(x.reshape(-1, C), gamma, beta, eps, y.reshape(-1, C), xhat.reshape(-1, C),
                                rstd.reshape(-1))
    return y, (xhat, rstd, gamma)


def layernorm_backward(dy, cache, planted_bug=ew.BUG_NONE):
    """-> dx (N..., C), dgamma (C,), dbeta (C,)."""
    xhat, rstd, gamma = cache
    C = xhat.shape[-1]
    dy = _flat(dy, xhat.dtype)
    n_rows = xhat.size // C
    parts = np.empty((2, ew.layernorm_backward_tasks(n_rows), C), dy.dtype)          # per-task dgamma, dbeta
    dx = np.empty_like(dy)
    ew.layernorm_backward_kernel(dy.reshape(-1, C), xhat.reshape(-1, C), rstd.reshape(-1), gamma,
                                 dx.reshape(-1, C), parts[0], parts[1], planted_bug)
    return dx, parts[0].sum(axis=0), parts[1].sum(axis=0)


# ---- dropout: the reference's counter-hash mask, regenerated in the backward, never stored --------
class HashDropoutCache(NamedTuple):
    seed_hash: int          # mix32(seed ^ GOLDEN)
    threshold: int          # drop where the 24-bit hash is below it
    scale: float            # 1 / (1 - p)
    offset: int = 0         # hash index of element 0: row_offset x elements per row (data-parallel ranks)
    row_ids: object = None  # or (N,) int64: row r's elements are keyed row_ids[r] * C + c (fused kernels only)


def dropout_forward(x, p, rng, training=True, row_offset=0):
    """Inverted dropout; the same seed draw and the same mask as the reference (``row_offset`` too)."""
    if not training or p == 0.0:
        return x, None
    seed = int(rng.integers(0, 2**32))
    x = _flat(x, x.dtype)
    offset = (int(row_offset) * (x.size // max(x.shape[0], 1))) & 0xFFFFFFFF if x.ndim else 0
    cache = HashDropoutCache(ew.dropout_seed_hash(seed), dropout_threshold(p), x.dtype.type(1.0 / (1.0 - p)), offset)
    y = np.empty_like(x)
    ew.dropout_kernel(x.reshape(-1), cache.seed_hash, cache.threshold, cache.scale, y.reshape(-1), cache.offset)
    return y, cache


def dropout_backward(dy, cache):
    """dx = dy * keep / (1 - p): the forward's kernel applied to dy (same mask)."""
    if cache is None:
        return dy
    dy = np.ascontiguousarray(dy)
    dx = np.empty_like(dy)
    ew.dropout_kernel(dy.reshape(-1), cache.seed_hash, cache.threshold, cache.scale, dx.reshape(-1), cache.offset)
    return dx


# ---- embedding sum -------------------------------------------------------------------------------
def embedding_sum(ids, token_type_ids, word, token_type, position, planted_bug=ew.BUG_NONE):
    """word[ids] + token_type[token_type_ids] + position[:T] -> (B, T, H): one parallel gather-and-add."""
    dtype = word.dtype
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    token_type_ids = np.ascontiguousarray(token_type_ids, dtype=np.int64)
    B, T = ids.shape
    out = np.empty((B, T, word.shape[1]), dtype)
    ew.embedding_sum_kernel(ids, token_type_ids, _flat(word, dtype), _flat(token_type, dtype),
                            _flat(position, dtype), out.reshape(B * T, -1), planted_bug)
    return out


# ---- embedding backward ----------------------------------------------------------------------------
def scatter_add_rows(target, rows, values):
    """target[rows[i]] += values[i] for every i, repeats accumulated; target: (V, C), values: (N, C)."""
    values = _flat(values, target.dtype)
    ew.scatter_add_rows_kernel(target, np.ascontiguousarray(rows, dtype=np.int64), values)
