"""The math the Numba kernels share: fast-math flags, the dropout hash jitted, a vectorisable exp, a vectorised max.

Numba has no vectorised ``exp`` without Intel's SVML (``math.exp`` is a libm call per element), so
the attention, loss and elementwise kernels use :func:`fast_exp`, a range reduction plus a polynomial
that LLVM vectorises. ``tests/test_kernels.py`` checks it against ``np.exp``.
"""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload

from .kernel_args import mix32_int
from .numba_cache import drop_stale_caches

drop_stale_caches()      # before any kernel loads: a cached kernel may inline an older version of this file

#: fast-math flags: no NaN/inf in the kernels (they never make one), reassociation so the
#: row sums and maxima vectorise. Agreement with the reference is checked in tests/test_kernels.py.
FASTMATH = {"nnan", "ninf", "nsz", "contract", "arcp", "reassoc"}

#: below these, :func:`fast_exp` returns exactly 0 (float32 / float64)
EXP_CUT_F32 = -80.0
EXP_CUT_F64 = -700.0

#: lowbias32 on an int64 holding a uint32 (Numba promotes to 64 bits, so the products are masked)
mix32 = njit(inline="always", cache=True)(mix32_int)


@intrinsic
def _float_from_bits(typingctx, bits):
    """The float whose IEEE-754 bit pattern is ``bits``: int32 -> float32, int64 -> float64 (LLVM's
    ``bitcast``, no instruction at all). Lets :func:`fast_exp` build 2^k from its exponent bits inside one
    vectorised loop, without writing the bits to a scratch array and reading them back as floats."""
    float_type = {types.int32: types.float32, types.int64: types.float64}.get(bits)
    if float_type is None:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(float_type))
    return float_type(bits), codegen


def _exp_f32(x):
    """:func:`fast_exp` of a float32 (jitted by its overload, inside the kernel that calls it)."""
    y = max(x, np.float32(EXP_CUT_F32))
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
    two_k = _float_from_bits(np.int32((np.int32(kf) + 127) << 23))   # 2^k (Numba widens int32 sums)
    return p * two_k if x >= np.float32(EXP_CUT_F32) else np.float32(0.0)


def _exp_f64(x):
    """:func:`fast_exp` of a float64: a longer polynomial, the same steps."""
    y = max(x, EXP_CUT_F64)
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
    two_k = _float_from_bits((np.int64(kf) + np.int64(1023)) << np.int64(52))     # 2^k
    return p * two_k if x >= EXP_CUT_F64 else 0.0


def fast_exp(x):
    """``exp(x)`` of one float32 or float64 ``x`` <= 0 (or near), written so that LLVM vectorises a loop that
    calls it; inside a Numba kernel, the jitted overload below runs (in Python, this ``np.exp``).

    exp(x) = 2^k * exp(r) with k = round(x / ln 2), r = x - k ln 2 in [-ln2/2, ln2/2];
    exp(r) by its Taylor polynomial (degree 7 for float32, 13 for float64: error < 1 ulp-ish);
    2^k from its exponent bits (:func:`_float_from_bits`). Below ``EXP_CUT`` (-80 for float32, -700 for
    float64) the result is exactly 0, as ``np.exp`` underflows to 0 further down: exp there is < 2e-35
    (float32), which no caller can tell from 0 beside the terms >= 1 it is added to. Not a clamp to the
    smallest normal number: divided by a softmax's row sum that would be *subnormal*, and subnormal operands
    run BLAS and SIMD code on Intel CPUs several times slower (a padded key's probability made the default
    step's backward matmuls 3-5x slower there; docs/performance.md, "Subnormal numbers").

    A scalar function, so each kernel computes its exponentials inside the loop that needs them (the
    cross-entropy's row, the attention's tile, the GELU's phi) in one pass; the float32 loop runs ~2.5x
    faster than the earlier array version, which stored 2^k's bits in a scratch array in a second pass.
    """
    return np.exp(x)


@overload(fast_exp, jit_options={"fastmath": FASTMATH})
def _fast_exp_jit(x):
    if x == types.float32:
        return _exp_f32
    if x == types.float64:
        return _exp_f64
    return None


#: independent running maxima in :func:`_max_lanes`: one SIMD register of float32 (AVX-512) or two (AVX2)
MAX_LANES = 16


@njit(inline="always", fastmath=FASTMATH, cache=True)
def _max_lanes(x):
    """``max(x)`` of a 1-D contiguous ``x`` (len >= 1), vectorised.

    A plain ``m = max(m, x[k])`` loop waits on the previous maximum at every element (LLVM does not vectorise
    that reduction here): ~7.6 ms for the (1,229 x 8,000) MLM logits on an Intel Xeon. Sixteen running maxima,
    one per lane, then the maximum of those: ~2.4 ms, the time to read the logits. Exact: max is exact."""
    n = x.shape[0]
    lanes = np.empty(MAX_LANES, x.dtype)
    for lane in range(MAX_LANES):
        lanes[lane] = x[0]
    body = n - n % MAX_LANES
    for k in range(0, body, MAX_LANES):
        for lane in range(MAX_LANES):
            lanes[lane] = max(lanes[lane], x[k + lane])
    m = lanes[0]
    for lane in range(1, MAX_LANES):
        m = max(m, lanes[lane])
    for k in range(body, n):                    # the tail
        m = max(m, x[k])
    return m
