"""What the fused attention kernels (Numba and CUDA) share, in plain Python.

Kept apart from ``numba_attention`` so that the CUDA path works without Numba (a GPU machine
may have a NumPy that its Numba does not support yet).
"""
from __future__ import annotations

from ..attention import GOLDEN, dropout_threshold

#: planted bugs, for tests that prove the comparison rejects a wrong kernel
BUG_NONE = 0
BUG_SKIP_CORRECTION = 1       # forget the online-softmax factor exp(m - m') when the max grows
BUG_SKIP_DROPOUT_RESCALE = 2  # keep P * Z instead of P * Z / (1 - p)


def mix32_int(x: int) -> int:
    """lowbias32 (the finalizer of ``attention.mix32``) on an integer holding a uint32: a Python int
    here, an int64 inside the Numba kernels (``numba_attention.mix32`` is this function, jitted), so
    the products are masked back to 32 bits."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def seed_hash(seed: int) -> int:
    """``mix32(seed ^ GOLDEN)``: the first round of the dropout hash, done once on the host."""
    return mix32_int((int(seed) & 0xFFFFFFFF) ^ GOLDEN)


def dropout_args(dropout_p: float, seed: int, planted_bug: int = BUG_NONE) -> tuple[int, int, float]:
    """(seed hash, integer threshold on the top 24 bits, 1/(1-p) rescale); threshold 0 = no dropout."""
    if dropout_p <= 0.0:
        return 0, 0, 1.0
    keep_scale = 1.0 if planted_bug == BUG_SKIP_DROPOUT_RESCALE else 1.0 / (1.0 - dropout_p)
    return seed_hash(seed), dropout_threshold(dropout_p), keep_scale
