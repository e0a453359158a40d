"""Shared by tests/test_kernels.py (Numba) and tests/test_gpu.py (CUDA): random attention inputs,
the float64 reference and the one comparison every fused kernel must pass.

No Numba import here, so the GPU tests run even where Numba cannot be imported.
"""
from __future__ import annotations

import numpy as np

from bert_from_scratch.nn import attention as ref

#: max |actual - expected| / max(1, max |expected|) allowed, per dtype
TOLERANCE = {np.float64: 1e-12, np.float32: 1e-5}


def assert_attention_close(actual, expected, tol, what):
    """Fail unless ``max|actual - expected| <= tol * max(1, max|expected|)`` (and shapes match)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = float(np.max(np.abs(actual - expected))) / max(1.0, float(np.max(np.abs(expected))))
    assert err <= tol, f"{what}: relative max error {err:.3e} > {tol:.0e}"


def random_inputs(rng, B, H, T, d, dtype, pad_fraction=0.3, fully_padded_row=False):
    """q, k, v, dout of shape (B, H, T, d) and a (B, T) padding mask with padded keys."""
    q, k, v, dout = (rng.standard_normal((B, H, T, d)).astype(dtype) for _ in range(4))
    mask = (rng.random((B, T)) >= pad_fraction).astype(np.int64)
    mask[:, 0] = 1                          # every sequence keeps its first token ...
    if fully_padded_row:
        mask[-1] = 0                        # ... except, optionally, one all-padding sequence
    return q, k, v, dout, mask


def reference_float64(q, k, v, dout, mask, dropout_p, seed):
    """The NumPy reference, run in float64 on the same (possibly float32) inputs."""
    q64, k64, v64, do64 = (a.astype(np.float64) for a in (q, k, v, dout))
    out, cache = ref.attention_forward_reference(q64, k64, v64, mask, dropout_p, seed)
    return (out,) + ref.attention_backward_reference(do64, cache)
