r"""Fused attention on the CPU with Numba: FlashAttention-2 without the ``T x T`` matrix.

The NumPy reference (``bert_from_scratch.attention``) builds the whole ``(B, H, T, T)``
probability tensor. This kernel never does: for a block of ``BLOCK_Q`` query rows it walks
over the keys in tiles of ``BLOCK_K`` and keeps a running ("online") softmax.

Forward, for one (batch, head) and one query block, with ``m`` the running row maximum,
``l`` the running row sum and ``O`` the running (unnormalised) output:

.. math::
    S^{(j)} = Q K_j^\top / \sqrt d + M_j,\qquad m' = \max(m, \mathrm{rowmax}\,S^{(j)}),\qquad
    P^{(j)} = e^{S^{(j)} - m'}

    l \leftarrow e^{m - m'}\, l + \mathrm{rowsum}\,P^{(j)},\qquad
    O \leftarrow e^{m - m'}\, O + \big(P^{(j)} \odot Z_j / (1-p)\big) V_j,\qquad m \leftarrow m'

and at the end ``O / l``. The factor ``e^{m - m'}`` is the *online-softmax correction*: every
time a new tile raises the row maximum, what was summed so far is rescaled to the new maximum.
Only ``m`` and ``1/l`` are kept per row for the backward (the log-sum-exp ``m + log l`` in two
pieces: in float32, a fully padded row has ``m`` near -10000 where one float32 ulp is 1e-3, so
``exp(S - lse)`` would lose three digits; ``exp(S - m) / l`` loses none).

Backward: the probabilities are recomputed tile by tile, ``P = exp(S - m) / l``, and with
``D_i = \mathrm{rowsum}(dO_i \odot O_i)`` (which equals ``rowsum(dP \odot P)``):

.. math::
    dV_j \mathrel{+}= \tilde P^\top dO,\quad dP = (dO\,V_j^\top) \odot Z/(1-p),\quad
    dS = P \odot (dP - D),\quad dQ \mathrel{+}= dS\,K_j/\sqrt d,\quad dK_j \mathrel{+}= dS^\top Q/\sqrt d

One ``prange`` task owns one (batch, head): it loops over key blocks (accumulating ``dK_j``,
``dV_j`` in a small scratch) and, inside, over query blocks (accumulating ``dQ`` straight
into the output, which no other task touches) -- one pass, no atomics, no second
recomputation. With ``B * H >= 12`` tasks this keeps two cores busy.

Dropout uses the same counter hash as the reference (``dropout_keep_mask``): the keep bit of
``(b, h, i, j)`` is ``mix32(mix32(mix32(mix32(seed ^ GOLDEN) ^ (b*H+h)) ^ i) ^ j) >> 8 >= threshold``,
so the backward regenerates the mask and all backends agree bit for bit.

Extra memory: ``O(T)`` per (batch, head) for ``m``, ``1/l``, ``D`` plus per-task tiles of
``BLOCK_Q x BLOCK_K``; nothing grows with ``T^2``.

Speed notes (2-core AVX-512 CPU): the tile products are plain triple loops whose innermost loop
runs over a contiguous row, which LLVM vectorises; ``exp`` is written out (range reduction +
polynomial) because Numba has no vectorised ``exp`` without Intel SVML. Set
``NUMBA_DISABLE_JIT=1`` to step through the kernels in Python.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..attention import GOLDEN, MASK_VALUE, dropout_threshold

#: query rows per parallel task / tile, and keys per tile (64 x 64 float32 = 16 KiB, fits L1)
BLOCK_Q = 64
BLOCK_K = 64

#: fast-math flags: no NaN/inf in the kernels (they never make one), reassociation so the
#: row sums and maxima vectorise. Agreement with the reference is checked in tests/test_kernels.py.
FASTMATH = {"nnan", "ninf", "nsz", "contract", "arcp", "reassoc"}

#: a finite "minus infinity" for the running maximum (``ninf`` promises LLVM no infinities)
NEG_BIG = -1.0e30

#: planted bugs, for tests that prove the comparison rejects a wrong kernel
BUG_NONE = 0
BUG_SKIP_CORRECTION = 1      # forget the online-softmax factor exp(m - m') when the max grows
BUG_SKIP_DROPOUT_RESCALE = 2  # keep P * Z instead of P * Z / (1 - p)


# --------------------------------------------------------------------------------------
# Scalar helpers
# --------------------------------------------------------------------------------------
@njit(inline="always", cache=True)
def mix32(x):
    """lowbias32 on an int64 holding a uint32 (Numba promotes to 64 bits: mask after multiplies)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def seed_hash(seed: int) -> int:
    """``mix32(seed ^ GOLDEN)``: the first round of the dropout hash, done once in Python."""
    return int(mix32((int(seed) & 0xFFFFFFFF) ^ GOLDEN))


@njit(inline="always", fastmath=FASTMATH, cache=True)
def _exp_shifted_inplace(row, n, shift, pow2):
    """``row[:n] = exp(row[:n] - shift)`` (all arguments <= 0), vectorised.

    exp(x) = 2^k * exp(r) with k = round(x / ln 2), r = x - k ln 2 in [-ln2/2, ln2/2];
    exp(r) by its Taylor polynomial (degree 7 for float32, 13 for float64: error < 1 ulp-ish);
    2^k built from its exponent bits in ``pow2`` (a float scratch viewed as integers).
    Inputs below -87 (float32) / -708 (float64) are clamped: exp there is < 1e-37 / 1e-307.
    """
    if row.itemsize == 4:
        bits = pow2.view(np.int32)
        for j in range(n):
            x = max(row[j] - shift, np.float32(-87.0))
            kf = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
            r = x - kf * np.float32(0.693145751953125) - kf * np.float32(1.428606765330187e-06)
            p = np.float32(1.0 / 5040.0)
            p = p * r + np.float32(1.0 / 720.0)
            p = p * r + np.float32(1.0 / 120.0)
            p = p * r + np.float32(1.0 / 24.0)
            p = p * r + np.float32(1.0 / 6.0)
            p = p * r + np.float32(0.5)
            p = p * r + np.float32(1.0)
            p = p * r + np.float32(1.0)
            row[j] = p
            bits[j] = (np.int32(kf) + np.int32(127)) << np.int32(23)
    else:
        bits64 = pow2.view(np.int64)
        for j in range(n):
            x = max(row[j] - shift, -708.0)
            kf = np.floor(x * 1.4426950408889634 + 0.5)
            r = x - kf * 0.6931471803691238 - kf * 1.9082149292705877e-10
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
            row[j] = p
            bits64[j] = (np.int64(kf) + np.int64(1023)) << np.int64(52)
    for j in range(n):
        row[j] *= pow2[j]


# --------------------------------------------------------------------------------------
# Tile products: the innermost loop runs along a contiguous row of the output (vectorised)
# --------------------------------------------------------------------------------------
@njit(inline="always", fastmath=FASTMATH, cache=True)
def _matmul_nn(a, b, c, m, n, p, accumulate):
    """c[:m, :n] (+)= a[:m, :p] @ b[:p, :n].

    Four rows of ``c`` at a time: each row ``b[t, :]`` is loaded once for four
    multiply-adds (2x faster than one row at a time on AVX-512).
    """
    m4 = m - m % 4
    for i in range(0, m4, 4):
        if not accumulate:
            for j in range(n):
                c[i, j] = 0.0
                c[i + 1, j] = 0.0
                c[i + 2, j] = 0.0
                c[i + 3, j] = 0.0
        for t in range(p):
            a0 = a[i, t]
            a1 = a[i + 1, t]
            a2 = a[i + 2, t]
            a3 = a[i + 3, t]
            for j in range(n):
                b_tj = b[t, j]
                c[i, j] += a0 * b_tj
                c[i + 1, j] += a1 * b_tj
                c[i + 2, j] += a2 * b_tj
                c[i + 3, j] += a3 * b_tj
    for i in range(m4, m):
        if not accumulate:
            for j in range(n):
                c[i, j] = 0.0
        for t in range(p):
            a_it = a[i, t]
            for j in range(n):
                c[i, j] += a_it * b[t, j]


@njit(inline="always", fastmath=FASTMATH, cache=True)
def _matmul_tn_acc(a, b, c, m, n, p):
    """c[:m, :n] += a[:p, :m]^T @ b[:p, :n]  (four rows of ``c`` at a time, as above)."""
    m4 = m - m % 4
    for i in range(0, m4, 4):
        for t in range(p):
            a0 = a[t, i]
            a1 = a[t, i + 1]
            a2 = a[t, i + 2]
            a3 = a[t, i + 3]
            for j in range(n):
                b_tj = b[t, j]
                c[i, j] += a0 * b_tj
                c[i + 1, j] += a1 * b_tj
                c[i + 2, j] += a2 * b_tj
                c[i + 3, j] += a3 * b_tj
    for i in range(m4, m):
        for t in range(p):
            a_ti = a[t, i]
            for j in range(n):
                c[i, j] += a_ti * b[t, j]


@njit(inline="always", cache=True)
def _transpose_tile(x, j0, nk, xt):
    """xt[:, :nk] = x[j0:j0+nk, :]^T  (x: (T, d), xt: (d, BLOCK_K))."""
    for jj in range(nk):
        for c in range(x.shape[1]):
            xt[c, jj] = x[j0 + jj, c]


# --------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------
@njit(parallel=True, fastmath=FASTMATH, cache=True)
def forward_kernel(q, k, v, key_bias, n_heads, scale, seed_h, drop_threshold, keep_scale,
                   planted_bug, out, row_max, row_inv_sum):
    """q, k, v, out: (B*H, T, d); key_bias: (B, T) 0 or -10000; row_max, row_inv_sum: (B*H, T).

    drop_threshold = 0 means no dropout. One prange task = one (batch*head, query block).
    """
    BH, T, d = q.shape
    dt = q.dtype
    n_qblocks = (T + BLOCK_Q - 1) // BLOCK_Q
    scale = dt.type(scale)
    keep_scale = dt.type(keep_scale)
    for task in prange(BH * n_qblocks):
        bh = task // n_qblocks
        b = bh // n_heads
        i0 = (task % n_qblocks) * BLOCK_Q
        nq = min(BLOCK_Q, T - i0)
        q_blk = q[bh, i0:i0 + nq]                       # (nq, d)
        # per-task scratch
        kt = np.empty((d, BLOCK_K), dt)                 # K tile, transposed
        s = np.empty((BLOCK_Q, BLOCK_K), dt)            # scores -> probabilities
        acc = np.zeros((BLOCK_Q, d), dt)                # running unnormalised output
        m = np.full(BLOCK_Q, NEG_BIG, dt)               # running row max
        l = np.zeros(BLOCK_Q, dt)                       # running row sum
        pow2 = np.empty(BLOCK_K, dt)
        for j0 in range(0, T, BLOCK_K):
            nk = min(BLOCK_K, T - j0)
            _transpose_tile(k[bh], j0, nk, kt)
            _matmul_nn(q_blk, kt, s, nq, nk, d, False)  # S = Q K_j^T: (nq, nk)
            for i in range(nq):
                row = s[i]
                new_max = m[i]
                for jj in range(nk):
                    x = row[jj] * scale + key_bias[b, j0 + jj]
                    row[jj] = x
                    new_max = max(new_max, x)
                _exp_shifted_inplace(row, nk, new_max, pow2)    # P = exp(S - m')
                row_sum = dt.type(0.0)
                for jj in range(nk):
                    row_sum += row[jj]
                correction = math.exp(m[i] - new_max)           # exp(m - m') <= 1
                if planted_bug == BUG_SKIP_CORRECTION:
                    correction = dt.type(1.0)
                l[i] = l[i] * correction + row_sum
                m[i] = new_max
                for c in range(d):
                    acc[i, c] *= correction
                if drop_threshold > 0:                          # P~ = P * Z / (1 - p)
                    h_row = mix32(mix32(seed_h ^ bh) ^ (i0 + i))
                    for jj in range(nk):
                        keep = (mix32(h_row ^ (j0 + jj)) >> 8) >= drop_threshold
                        row[jj] = row[jj] * keep_scale if keep else dt.type(0.0)
            _matmul_nn(s, v[bh, j0:j0 + nk], acc, nq, d, nk, True)   # O += P~ V_j
        for i in range(nq):
            inv = dt.type(1.0) / l[i]
            for c in range(d):
                out[bh, i0 + i, c] = acc[i, c] * inv
            row_max[bh, i0 + i] = m[i]
            row_inv_sum[bh, i0 + i] = inv


# --------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------
@njit(parallel=True, fastmath=FASTMATH, cache=True)
def backward_kernel(q, k, v, out, dout, key_bias, row_max, row_inv_sum, n_heads, scale, seed_h,
                    drop_threshold, keep_scale, dq, dk, dv):
    """All (B*H, T, d) except key_bias (B, T), row_max/row_inv_sum (B*H, T). Writes dq, dk, dv.

    One prange task = one (batch*head): key blocks outside, query blocks inside.
    """
    BH, T, d = q.shape
    dt = q.dtype
    scale = dt.type(scale)
    keep_scale = dt.type(keep_scale)
    for bh in prange(BH):
        b = bh // n_heads
        # D_i = rowsum(dO_i * O_i): (T,)
        delta = np.empty(T, dt)
        for i in range(T):
            acc = dt.type(0.0)
            for c in range(d):
                acc += dout[bh, i, c] * out[bh, i, c]
            delta[i] = acc
        dq_h = dq[bh]                                  # (T, d), owned by this task
        for i in range(T):
            for c in range(d):
                dq_h[i, c] = 0.0
        kt = np.empty((d, BLOCK_K), dt)
        vt = np.empty((d, BLOCK_K), dt)
        s = np.empty((BLOCK_Q, BLOCK_K), dt)           # S -> P -> P~
        dp = np.empty((BLOCK_Q, BLOCK_K), dt)          # dP~ -> dP -> dS
        dk_acc = np.empty((BLOCK_K, d), dt)
        dv_acc = np.empty((BLOCK_K, d), dt)
        pow2 = np.empty(BLOCK_K, dt)
        for j0 in range(0, T, BLOCK_K):
            nk = min(BLOCK_K, T - j0)
            k_tile = k[bh, j0:j0 + nk]                 # (nk, d)
            _transpose_tile(k[bh], j0, nk, kt)
            _transpose_tile(v[bh], j0, nk, vt)
            for jj in range(nk):
                for c in range(d):
                    dk_acc[jj, c] = 0.0
                    dv_acc[jj, c] = 0.0
            for i0 in range(0, T, BLOCK_Q):
                nq = min(BLOCK_Q, T - i0)
                q_blk = q[bh, i0:i0 + nq]              # (nq, d)
                do_blk = dout[bh, i0:i0 + nq]          # (nq, d)
                _matmul_nn(q_blk, kt, s, nq, nk, d, False)    # S = Q K_j^T
                _matmul_nn(do_blk, vt, dp, nq, nk, d, False)  # dP~ = dO V_j^T
                for i in range(nq):
                    row = s[i]
                    drow = dp[i]
                    for jj in range(nk):
                        row[jj] = row[jj] * scale + key_bias[b, j0 + jj]
                    # forward: P = exp(S - m) / l
                    _exp_shifted_inplace(row, nk, row_max[bh, i0 + i], pow2)
                    inv = row_inv_sum[bh, i0 + i]
                    d_i = delta[i0 + i]
                    if drop_threshold > 0:
                        h_row = mix32(mix32(seed_h ^ bh) ^ (i0 + i))
                        for jj in range(nk):
                            p = row[jj] * inv
                            keep = (mix32(h_row ^ (j0 + jj)) >> 8) >= drop_threshold
                            zs = keep_scale if keep else dt.type(0.0)   # Z / (1 - p)
                            drow[jj] = p * (drow[jj] * zs - d_i)        # dS = P (dP - D)
                            row[jj] = p * zs                            # P~
                    else:
                        for jj in range(nk):
                            p = row[jj] * inv
                            drow[jj] = p * (drow[jj] - d_i)
                            row[jj] = p
                _matmul_tn_acc(s, do_blk, dv_acc, nk, d, nq)          # dV_j += P~^T dO
                _matmul_tn_acc(dp, q_blk, dk_acc, nk, d, nq)          # dK_j += dS^T Q
                _matmul_nn(dp, k_tile, dq_h[i0:i0 + nq], nq, d, nk, True)  # dQ += dS K_j
            for jj in range(nk):
                for c in range(d):
                    dk[bh, j0 + jj, c] = dk_acc[jj, c] * scale
                    dv[bh, j0 + jj, c] = dv_acc[jj, c]
        for i in range(T):
            for c in range(d):
                dq_h[i, c] *= scale


# --------------------------------------------------------------------------------------
# Python entry points (the dispatcher in bert_from_scratch/attention.py calls these)
# --------------------------------------------------------------------------------------
def _check_inputs(q, k, v, mask, dropout_p):
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not isinstance(a, np.ndarray):
            raise ValueError(f"numba attention needs NumPy arrays; {name} is {type(a).__name__}")
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"attention expects q, k, v of one shape (B, H, T, d); got {q.shape}, {k.shape}, {v.shape}")
    if q.dtype not in (np.float32, np.float64) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"numba attention supports float32 or float64 with one dtype for q, k, v; "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if mask is not None and tuple(mask.shape) != (q.shape[0], q.shape[2]):
        raise ValueError(f"attention mask must have shape (B, T) = {(q.shape[0], q.shape[2])}; got {tuple(mask.shape)}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1); got {dropout_p}")


def _key_bias(mask, B, T, dtype):
    """(B, T) additive bias on the keys, computed exactly as the reference: (1 - mask) * -10000."""
    if mask is None:
        return np.zeros((B, T), dtype)
    mask = np.asarray(mask)
    return np.ascontiguousarray((1.0 - mask.astype(dtype)) * dtype.type(MASK_VALUE))


def _dropout_args(dropout_p, seed, planted_bug):
    """(seed hash, integer threshold on the top 24 bits, 1/(1-p) rescale)."""
    if dropout_p <= 0.0:
        return 0, 0, 1.0
    keep_scale = 1.0 if planted_bug == BUG_SKIP_DROPOUT_RESCALE else 1.0 / (1.0 - dropout_p)
    return seed_hash(seed), dropout_threshold(dropout_p), keep_scale


def attention_forward(q, k, v, mask=None, dropout_p=0.0, seed=0, *, planted_bug=BUG_NONE):
    """Fused attention forward. q, k, v: (B, H, T, d) float32/float64; mask: (B, T) 1 keep / 0 pad.

    Returns ``(out, cache)`` with out (B, H, T, d). ``planted_bug`` (tests only) makes the kernel
    deliberately wrong, to show the comparison against the reference catches it.
    """
    _check_inputs(q, k, v, mask, dropout_p)
    B, H, T, d = q.shape
    dtype = q.dtype
    q3, k3, v3 = (np.ascontiguousarray(a).reshape(B * H, T, d) for a in (q, k, v))
    key_bias = _key_bias(mask, B, T, dtype)
    seed_h, threshold, keep_scale = _dropout_args(dropout_p, seed, planted_bug)
    out = np.empty((B * H, T, d), dtype)
    row_max = np.empty((B * H, T), dtype)
    row_inv_sum = np.empty((B * H, T), dtype)
    scale = 1.0 / math.sqrt(d)
    forward_kernel(q3, k3, v3, key_bias, H, scale, seed_h, threshold, keep_scale, planted_bug,
                   out, row_max, row_inv_sum)
    cache = {"backend": "numba", "q": q3, "k": k3, "v": v3, "out": out, "key_bias": key_bias,
             "row_max": row_max, "row_inv_sum": row_inv_sum, "shape": (B, H, T, d),
             "dropout_p": dropout_p, "seed": seed, "scale": scale, "planted_bug": planted_bug}
    return out.reshape(B, H, T, d), cache


def attention_backward(dout, cache):
    """Fused attention backward: dout (B, H, T, d) -> (dq, dk, dv), each (B, H, T, d)."""
    B, H, T, d = cache["shape"]
    q3 = cache["q"]
    if not isinstance(dout, np.ndarray) or dout.shape != (B, H, T, d):
        raise ValueError(f"dout must be a NumPy array of shape {(B, H, T, d)}; got {getattr(dout, 'shape', type(dout))}")
    dout3 = np.ascontiguousarray(dout, dtype=q3.dtype).reshape(B * H, T, d)
    seed_h, threshold, keep_scale = _dropout_args(cache["dropout_p"], cache["seed"], cache["planted_bug"])
    dq, dk, dv = (np.empty((B * H, T, d), q3.dtype) for _ in range(3))
    backward_kernel(q3, cache["k"], cache["v"], cache["out"], dout3, cache["key_bias"], cache["row_max"],
                    cache["row_inv_sum"], H, cache["scale"], seed_h, threshold, keep_scale, dq, dk, dv)
    return dq.reshape(B, H, T, d), dk.reshape(B, H, T, d), dv.reshape(B, H, T, d)
