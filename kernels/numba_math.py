"""The math the Numba kernels share: fast-math flags, the dropout hash jitted, a vectorisable exp.

Numba has no vectorised ``exp`` without Intel's SVML (``math.exp`` is a libm call per element), so
the attention and elementwise kernels use :func:`_exp_inplace`, a range reduction plus a polynomial
that LLVM vectorises. ``tests/test_kernels.py`` checks it against ``np.exp``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .kernel_args import mix32_int

#: fast-math flags: no NaN/inf in the kernels (they never make one), reassociation so the
#: row sums and maxima vectorise. Agreement with the reference is checked in tests/test_kernels.py.
FASTMATH = {"nnan", "ninf", "nsz", "contract", "arcp", "reassoc"}

#: lowbias32 on an int64 holding a uint32 (Numba promotes to 64 bits, so the products are masked)
mix32 = njit(inline="always", cache=True)(mix32_int)


@njit(inline="always", fastmath=FASTMATH, cache=True)
def _exp_inplace(x, pow2):
    """``x[:] = exp(x)`` for a 1-D contiguous ``x`` of values <= 0 (or near), vectorised.

    exp(x) = 2^k * exp(r) with k = round(x / ln 2), r = x - k ln 2 in [-ln2/2, ln2/2];
    exp(r) by its Taylor polynomial (degree 7 for float32, 13 for float64: error < 1 ulp-ish);
    2^k built from its exponent bits in ``pow2`` (a float scratch, at least ``len(x)`` long,
    viewed as integers). Inputs below -87 (float32) / -708 (float64) are clamped: exp there
    is < 1e-37 / 1e-307, which every caller multiplies by something finite or adds to >= 1.
    """
    n = x.shape[0]
    if x.itemsize == 4:
        bits = pow2.view(np.int32)
        for j in range(n):
            y = max(x[j], np.float32(-87.0))
            kf = np.floor(y * np.float32(1.4426950408889634) + np.float32(0.5))
            r = y - kf * np.float32(0.693145751953125) - kf * np.float32(1.428606765330187e-06)
            p = np.float32(1.0 / 5040.0)
            p = p * r + np.float32(1.0 / 720.0)
            p = p * r + np.float32(1.0 / 120.0)
            p = p * r + np.float32(1.0 / 24.0)
            p = p * r + np.float32(1.0 / 6.0)
            p = p * r + np.float32(0.5)
            p = p * r + np.float32(1.0)
            p = p * r + np.float32(1.0)
            x[j] = p
            bits[j] = (np.int32(kf) + np.int32(127)) << np.int32(23)
    else:
        bits64 = pow2.view(np.int64)
        for j in range(n):
            y = max(x[j], -708.0)
            kf = np.floor(y * 1.4426950408889634 + 0.5)
            r = y - kf * 0.6931471803691238 - kf * 1.9082149292705877e-10
            p = 1.0 / 6227020800.0
            p = p * r + 1.0 / 479001600.0
            p = p * r + 1.0 / 39916800.0
            p = p * r + 1.0 / 3628800.0
            p = p * r + 1.0 / 362880.0
            p = p * r + 1.0 / 40320.0
            p = p * r + 1.0 / 5040.0
            p = p * r + 1.0 / 720.0
            p = p * r + 1.0 / 120.0
            p = p * r + 1.0 / 24.0
            p = p * r + 1.0 / 6.0
            p = p * r + 0.5
            p = p * r + 1.0
            p = p * r + 1.0
            x[j] = p
            bits64[j] = (np.int64(kf) + np.int64(1023)) << np.int64(52)
    for j in range(n):
        x[j] *= pow2[j]
