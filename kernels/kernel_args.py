"""What the NumPy reference and the fused kernels (Numba and CUDA) share, in plain Python.

``kernels/`` is a leaf: it imports nothing from ``bert_from_scratch``. The constants and the
counter-based dropout hash that the reference layers (``bert_from_scratch/nn``) and the kernels
must agree on bit for bit live here, and the reference imports them from here.

Kept apart from ``numba_attention`` so that the CUDA path works without Numba (a GPU machine
may have a NumPy that its Numba does not support yet).
"""
from __future__ import annotations

import numpy as np

#: added to the scores of padded keys before the softmax (google-research/bert uses -10000)
MASK_VALUE = -10000.0

#: the first round of the dropout hash mixes the seed with the golden-ratio constant
GOLDEN = 0x9E3779B9


def mix32(x, xp=np):
    """The "lowbias32" integer finalizer: a bijective avalanche hash of uint32 arrays (NumPy or CuPy)."""
    x = x ^ (x >> xp.uint32(16))
    x = x * xp.uint32(0x7FEB352D)
    x = x ^ (x >> xp.uint32(15))
    x = x * xp.uint32(0x846CA68B)
    x = x ^ (x >> xp.uint32(16))
    return x


def dropout_threshold(p: float) -> int:
    """Entries whose 24-bit hash is below this are dropped: P(drop) = threshold / 2**24."""
    return int(round(p * (1 << 24)))


def check_qkv(q, k, v, mask, q_pos=None) -> None:
    """q, k, v of one shape (B, H, T, d); mask (B, T) or None. With ``q_pos`` (B, Tq), the positions of the
    query rows among the T keys: q is (B, H, Tq, d) and k, v (B, H, T, d)."""
    if q_pos is None:
        if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
            raise ValueError(f"attention expects q, k, v of one shape (B, H, T, d); got {q.shape}, {k.shape}, {v.shape}")
    else:
        if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape or q.shape[:2] + q.shape[3:] != k.shape[:2] + k.shape[3:]:
            raise ValueError(f"attention at query rows expects q (B, H, Tq, d) and k, v (B, H, T, d); got "
                             f"{q.shape}, {k.shape}, {v.shape}")
        if tuple(q_pos.shape) != (q.shape[0], q.shape[2]):
            raise ValueError(f"q_pos must have shape (B, Tq) = {(q.shape[0], q.shape[2])}; got {tuple(q_pos.shape)}")
    if mask is not None and tuple(mask.shape) != (k.shape[0], k.shape[2]):
        raise ValueError(f"attention mask must have shape (B, T) = {(k.shape[0], k.shape[2])}; got {tuple(mask.shape)}")


def check_kernel_inputs(q, k, v, mask, dropout_p, backend: str, q_pos=None) -> None:
    """What the fused kernels (Numba, CUDA) accept: the shapes above, one float32/float64 dtype, 0 <= p < 1."""
    check_qkv(q, k, v, mask, q_pos)
    if q.dtype not in (np.float32, np.float64) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{backend} attention supports float32 or float64 with one dtype for q, k, v; "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1); got {dropout_p}")

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
