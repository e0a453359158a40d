r"""Fused attention on the CPU with Numba: FlashAttention-2 without the ``T x T`` matrix.

The NumPy reference (``bert_from_scratch.attention``) builds the whole ``(B, H, T, T)`` probability tensor. This
kernel never does: for a block of ``BLOCK_Q`` query rows it walks over the keys in tiles of ``BLOCK_K`` and keeps a
running ("online") softmax. Forward, for one (batch, head) and one query block, with ``m`` the running row maximum,
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
``dV_j`` in their rows of the output) and, inside, over query blocks (accumulating ``dQ``
straight into the output, which no other task touches) -- one pass, no atomics, no second
recomputation. The first product into each output block is written there directly and only
later ones are added (no zeroing pass, no add pass: at T <= 64, one block each way, as in the
default pretraining job, nothing is added at all), and ``1/sqrt(d)`` is folded into ``dS``
as it is computed rather than applied to ``dQ`` and ``dK`` in passes of their own: together ~10% of the backward
at the default job's size (docs/performance.md). With ``B * H >= 12`` tasks this keeps two cores busy (tasks are
handed out one at a time, see ``_dynamic_schedule``).

Dropout uses the same counter hash as the reference (``dropout_keep_mask``): the keep bit of ``(b, h, i, j)`` is
``mix32(mix32(mix32(mix32(seed ^ GOLDEN) ^ (b*H+h)) ^ i) ^ j) >> 8 >= threshold``, so the backward regenerates the
mask and all backends agree bit for bit.

Layout: ``q, k, v`` come in as contiguous (B, H, T, d). The output is written with the heads merged, (B, T, H, d),
as the block reads it, and returned as a (B, H, T, d) view: the block's merge copies nothing. The backward takes
``dO`` in that layout, without a copy, and gathers each head's rows into a contiguous tile for BLAS. At the
default job's size this took 0.9-1.3 ms off the first layer's attention with its copies (docs/performance.md).

Extra memory: ``O(T)`` per (batch, head) for ``m``, ``1/l``, ``D``, the backward's ``(T, d)`` tile of ``dO``, and
per-task tiles of ``BLOCK_Q x BLOCK_K``; nothing grows with ``T^2``.

Speed notes (2-core AVX-512 CPU, float32, one (batch, head), T = 512, one thread):

- The tile products are BLAS calls: ``np.dot(a, b, out)`` on contiguous 64 x 64 tiles, which Numba turns into
  ``sgemm``/``dgemm`` (SciPy's OpenBLAS) at ~110 GFLOP/s per core, against 20-35 GFLOP/s for the best hand-written
  loops (4 rows of ``C`` per pass, innermost loop over a contiguous row: LLVM vectorises it, but every ``C``
  element is loaded and stored once per ``k``). 64 x 64 x 64 is exactly OpenBLAS's single-thread limit
  (m n k <= 2^18), so BLAS never starts threads of its own inside a ``prange`` task. Only the "nn" and "tn" gemm
  forms are used ("nt" is ~1.5x slower here): the forward keeps ``S^T`` (keys x queries), the backward transposes
  ``K_j``, ``V_j`` once per key block.
- ``exp`` is written out (range reduction + polynomial, ~1 cycle per element in 16-wide AVX-512) because Numba
  has no vectorised ``exp`` without Intel SVML.
- Two things silently stop LLVM's vectoriser and cost more than the arithmetic: indexing with a computed index
  (``a[j0 + jj]``: Numba adds a negative-index check; slice first, then index with the loop variable) and array
  expressions on slices (``a[i0:i1] += b``); see ``_add_into``.
- Result: the gemms alone take ~74% of the forward's time and ~86% of the backward's.

Set ``NUMBA_DISABLE_JIT=1`` to step through the kernels in Python.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import numba
from numba import njit, prange

from .kernel_args import MASK_VALUE, check_kernel_inputs

#: query rows per parallel task / tile, and keys per tile (64 x 64 float32 = 16 KiB, fits L1)
BLOCK_Q = 64
BLOCK_K = 64

#: a finite "minus infinity" for the running maximum (``ninf`` promises LLVM no infinities)
NEG_BIG = -1.0e30

# planted bugs (tests only) and the host side of the dropout hash, shared with the CUDA kernel
from .kernel_args import BUG_NONE, BUG_SKIP_CORRECTION, BUG_SKIP_DROPOUT_RESCALE  # noqa: E402,F401
from .kernel_args import dropout_args as _dropout_args, mix32_int, seed_hash  # noqa: E402,F401
from .numba_math import FASTMATH, fast_exp, mix32  # noqa: E402,F401


# --------------------------------------------------------------------------------------
# Tile helpers
# --------------------------------------------------------------------------------------
@njit(inline="always", cache=True)
def _transpose_into(x, xt):
    """xt[:, :] = x^T for 2-D contiguous x (n, d) and xt (d, n) (a 64 x 64 tile: L1-resident)."""
    for j in range(x.shape[0]):
        for c in range(x.shape[1]):
            xt[c, j] = x[j, c]


@njit(inline="always", fastmath=FASTMATH, cache=True)
def _add_into(dst, src):
    """dst[:, :] += src for 2-D arrays of one shape, rows contiguous (an explicit loop: the
    array expression ``dst += src`` on a slice runs ~4x slower inside a prange task)."""
    for r in range(src.shape[0]):
        for c in range(src.shape[1]):
            dst[r, c] += src[r, c]


@njit(inline="always", cache=True)
def _tile(buffer, rows, cols):
    """A C-contiguous (rows, cols) view on the front of a flat scratch buffer."""
    return buffer[:rows * cols].reshape((rows, cols))


# --------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------
@njit(parallel=True, fastmath=FASTMATH, cache=True)
def forward_kernel(q, k, v, key_bias, q_pos, n_heads, scale, seed_h, drop_threshold, keep_scale,
                   planted_bug, out, row_max, row_inv_sum, bh_offset=0):
    """q: (B*H, Tq, d); out: (B, Tq, H, d), the heads merged; k, v: (B*H, T, d); key_bias: (B, T) 0 or -10000;
    q_pos: (B, Tq) the query rows' positions among the T (the dropout hash's ``i``; ``arange(T)`` when Tq = T);
    row_max, row_inv_sum: (B*H, Tq).

    drop_threshold = 0 means no dropout. One prange task = one (batch*head, query block).

    The tile products go to BLAS (``np.dot`` with an ``out`` array: Numba calls ``?gemm`` on the
    contiguous tiles, about 3x faster than hand-written loops). A 64 x 64 x 64 product is at
    OpenBLAS's single-thread threshold (m n k <= 2^18), so BLAS does not start threads of its
    own inside the ``prange`` tasks. The scores are kept transposed, ``S^T = K_j Q^T``
    (keys x queries), so that both products are the fast "nn"/"tn" gemm forms and the key
    mask is one scalar per row; the running statistics ``m``, ``l`` are vectors over queries.
    """
    BH, Tq, d = q.shape
    T = k.shape[1]
    dt = q.dtype
    n_qblocks = (Tq + BLOCK_Q - 1) // BLOCK_Q
    scale = dt.type(scale)
    keep_scale = dt.type(keep_scale)
    for task in prange(BH * n_qblocks):
        bh = task // n_qblocks
        b = bh // n_heads
        i0 = (task % n_qblocks) * BLOCK_Q
        nq = min(BLOCK_Q, Tq - i0)
        # per-task scratch
        q_t = np.empty((d, nq), dt)                     # Q block, transposed: (d, nq)
        _transpose_into(q[bh, i0:i0 + nq], q_t)
        st_buffer = np.empty(BLOCK_K * nq, dt)          # S^T -> P~^T: (nk, nq)
        pv = np.empty((nq, d), dt)                      # P~ V_j: (nq, d)
        acc = np.zeros((nq, d), dt)                     # running unnormalised output
        m = np.full(nq, NEG_BIG, dt)                    # running row max
        l = np.zeros(nq, dt)                            # running row sum
        new_max = np.empty(nq, dt)
        correction = np.empty(nq, dt)
        row_hash = np.empty(nq, np.int64)               # dropout hash of (b*H+h, query row)
        if drop_threshold > 0:
            h_bh = mix32(seed_h ^ ((bh + bh_offset) & 0xFFFFFFFF))     # global (batch*head) of a shard
            positions = q_pos[b, i0:i0 + nq]
            for i in range(nq):
                row_hash[i] = mix32(h_bh ^ positions[i])
        for j0 in range(0, T, BLOCK_K):
            nk = min(BLOCK_K, T - j0)
            st = _tile(st_buffer, nk, nq)
            np.dot(k[bh, j0:j0 + nk], q_t, st)          # S^T = K_j Q^T: (nk, nq)
            for i in range(nq):
                new_max[i] = m[i]
            for jj in range(nk):                        # S = Q K^T / sqrt(d) + mask
                bias = key_bias[b, j0 + jj]
                for i in range(nq):
                    x = st[jj, i] * scale + bias
                    st[jj, i] = x
                    new_max[i] = max(new_max[i], x)
            for i in range(nq):                         # exp(m - m') <= 1
                correction[i] = fast_exp(m[i] - new_max[i])
            if planted_bug == BUG_SKIP_CORRECTION:
                correction[:] = 1.0
            for i in range(nq):
                l[i] *= correction[i]
                m[i] = new_max[i]
            for jj in range(nk):
                p_row = st[jj]
                for i in range(nq):                     # P = exp(S - m')
                    p = fast_exp(p_row[i] - new_max[i])
                    p_row[i] = p
                    l[i] += p
                if drop_threshold > 0:                  # P~ = P * Z / (1 - p)
                    for i in range(nq):
                        keep = (mix32(row_hash[i] ^ (j0 + jj)) >> 8) >= drop_threshold
                        p_row[i] = p_row[i] * keep_scale if keep else dt.type(0.0)
            np.dot(st.T, v[bh, j0:j0 + nk], pv)         # P~ V_j: (nq, d)
            for i in range(nq):                         # O <- exp(m - m') O + P~ V_j
                c_i = correction[i]
                for c in range(d):
                    acc[i, c] = acc[i, c] * c_i + pv[i, c]
        h = bh - b * n_heads
        for i in range(nq):
            inv = dt.type(1.0) / l[i]
            for c in range(d):                          # this head's part of the merged row
                out[b, i0 + i, h, c] = acc[i, c] * inv
            row_max[bh, i0 + i] = m[i]
            row_inv_sum[bh, i0 + i] = inv


# --------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------
@njit(parallel=True, fastmath=FASTMATH, cache=True)
def backward_kernel(q, k, v, out, dout, key_bias, q_pos, row_max, row_inv_sum, n_heads, scale, seed_h,
                    drop_threshold, keep_scale, dq, dk, dv, bh_offset=0):
    """q, dq: (B*H, Tq, d); out, dout: (B, Tq, H, d), the heads merged; k, v, dk, dv: (B*H, T, d); key_bias (B, T),
    q_pos (B, Tq), row_max/row_inv_sum (B*H, Tq). Writes dq, dk, dv.

    One prange task = one (batch*head): key blocks outside, query blocks inside. The five tile
    products are BLAS calls on contiguous tiles (``np.dot`` with ``out``), in the "nn"/"tn"
    forms only: ``K_j`` and ``V_j`` are transposed once per key block. ``dp`` holds
    ``dS / sqrt(d)``, so the products into dQ and dK need no rescaling afterwards.
    """
    BH, Tq, d = q.shape
    T = k.shape[1]
    dt = q.dtype
    scale = dt.type(scale)
    keep_scale = dt.type(keep_scale)
    for bh in prange(BH):
        b = bh // n_heads
        h = bh - b * n_heads
        positions = q_pos[b]                           # (Tq,) the dropout hash's query index
        # this head's dO, gathered from the merged rows into a contiguous (Tq, d) tile for the BLAS products,
        # and D_i = rowsum(dO_i * O_i): (Tq,)
        do_h = np.empty((Tq, d), dt)
        delta = np.empty(Tq, dt)
        for i in range(Tq):                            # scalar indexing, no view per row: a view of a shared
            acc = dt.type(0.0)                         # array counts a reference, atomically, on both threads
            for c in range(d):
                g = dout[b, i, h, c]
                do_h[i, c] = g
                acc += g * out[b, i, h, c]
            delta[i] = acc
        dq_h = dq[bh]                                  # (Tq, d), owned by this task
        kt_buffer = np.empty(d * BLOCK_K, dt)          # K_j^T: (d, nk)
        vt_buffer = np.empty(d * BLOCK_K, dt)          # V_j^T: (d, nk)
        s_buffer = np.empty(BLOCK_Q * BLOCK_K, dt)     # S -> P -> P~: (nq, nk)
        dp_buffer = np.empty(BLOCK_Q * BLOCK_K, dt)    # dP~ -> dS: (nq, nk)
        kd_buffer = np.empty(BLOCK_K * d, dt)          # a (nk, d) product, before accumulation
        qd_buffer = np.empty(BLOCK_Q * d, dt)          # a (nq, d) product, before accumulation
        for j0 in range(0, T, BLOCK_K):
            nk = min(BLOCK_K, T - j0)
            k_tile = k[bh, j0:j0 + nk]                 # (nk, d)
            kt = _tile(kt_buffer, d, nk)
            vt = _tile(vt_buffer, d, nk)
            _transpose_into(k_tile, kt)
            _transpose_into(v[bh, j0:j0 + nk], vt)
            kd = _tile(kd_buffer, nk, d)
            bias = key_bias[b, j0:j0 + nk]             # (nk,) 0 or -10000; a slice, so that the
            #                                            loop below indexes it without the
            #                                            negative-index check (which stops SIMD)
            dk_acc = dk[bh, j0:j0 + nk]                # (nk, d), owned by this task
            dv_acc = dv[bh, j0:j0 + nk]
            if Tq == 0:                                # no query rows (q_pos empty): no product writes them
                dk_acc[:, :] = 0.0
                dv_acc[:, :] = 0.0
            for i0 in range(0, Tq, BLOCK_Q):
                nq = min(BLOCK_Q, Tq - i0)
                q_blk = q[bh, i0:i0 + nq]              # (nq, d)
                do_blk = do_h[i0:i0 + nq]              # (nq, d)
                s = _tile(s_buffer, nq, nk)
                dp = _tile(dp_buffer, nq, nk)
                qd = _tile(qd_buffer, nq, d)
                np.dot(q_blk, kt, s)                   # S = Q K_j^T
                np.dot(do_blk, vt, dp)                 # dP~ = dO V_j^T
                for i in range(nq):                    # the forward's P = exp(S - m) / l, recomputed,
                    row = s[i]                         # with S = Q K^T / sqrt(d) + mask
                    drow = dp[i]
                    shift = row_max[bh, i0 + i]
                    inv = row_inv_sum[bh, i0 + i]
                    d_i = delta[i0 + i]
                    if drop_threshold > 0:
                        h_row = mix32(mix32(seed_h ^ ((bh + bh_offset) & 0xFFFFFFFF)) ^ positions[i0 + i])
                        for jj in range(nk):
                            p = fast_exp(row[jj] * scale + bias[jj] - shift) * inv
                            keep = (mix32(h_row ^ (j0 + jj)) >> 8) >= drop_threshold
                            zs = keep_scale if keep else dt.type(0.0)   # Z / (1 - p)
                            drow[jj] = p * (drow[jj] * zs - d_i) * scale  # dS / sqrt(d) = P (dP - D) / sqrt(d)
                            row[jj] = p * zs                            # P~
                    else:
                        for jj in range(nk):
                            p = fast_exp(row[jj] * scale + bias[jj] - shift) * inv
                            drow[jj] = p * (drow[jj] - d_i) * scale
                            row[jj] = p
                if i0 == 0:                            # the first query block writes, the others add
                    np.dot(s.T, do_blk, dv_acc)        # dV_j = P~^T dO
                    np.dot(dp.T, q_blk, dk_acc)        # dK_j = dS^T Q / sqrt(d)
                else:
                    np.dot(s.T, do_blk, kd)            # dV_j += P~^T dO
                    _add_into(dv_acc, kd)
                    np.dot(dp.T, q_blk, kd)            # dK_j += dS^T Q / sqrt(d)
                    _add_into(dk_acc, kd)
                if j0 == 0:                            # the first key block writes, the others add
                    np.dot(dp, k_tile, dq_h[i0:i0 + nq])   # dQ = dS K_j / sqrt(d)
                else:
                    np.dot(dp, k_tile, qd)             # dQ += dS K_j / sqrt(d)
                    _add_into(dq_h[i0:i0 + nq], qd)


# --------------------------------------------------------------------------------------
# Python entry points (the dispatcher in bert_from_scratch/attention.py calls these)
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _dynamic_schedule():
    """Hand out ``prange`` tasks one at a time (Numba's default splits them into one static
    chunk per thread): on a shared machine a thread slowed down by another process then
    simply takes fewer tasks instead of holding everyone up. Restores the caller's setting."""
    previous = numba.set_parallel_chunksize(1)
    try:
        yield
    finally:
        numba.set_parallel_chunksize(previous)


def _check_inputs(q, k, v, mask, dropout_p, q_pos=None):
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not isinstance(a, np.ndarray):
            raise ValueError(f"numba attention needs NumPy arrays; {name} is {type(a).__name__}")
    check_kernel_inputs(q, k, v, mask, dropout_p, "numba", q_pos)   # shapes, dtype, dropout: shared checks


def _key_bias(mask, B, T, dtype):
    """(B, T) additive bias on the keys, computed exactly as the reference: (1 - mask) * -10000."""
    if mask is None:
        return np.zeros((B, T), dtype)
    mask = np.asarray(mask)
    return np.ascontiguousarray((1.0 - mask.astype(dtype)) * dtype.type(MASK_VALUE))


def _query_positions(q_pos, B, T):
    """(B, Tq) int64, C-contiguous and writable: one kernel signature for both uses (Numba compiles a read-only
    array apart, as broadcast_to's view at B=1 was): the given rows, or every row 0..T-1."""
    if q_pos is None:
        return np.broadcast_to(np.arange(T, dtype=np.int64), (B, T)).copy()
    q_pos = np.require(q_pos, np.int64, ["C_CONTIGUOUS", "WRITEABLE"])
    if q_pos.size and not (0 <= q_pos.min() and q_pos.max() < T):
        raise ValueError(f"q_pos must hold positions in [0, {T}); got {q_pos.min()}..{q_pos.max()}")
    return q_pos


def attention_forward(q, k, v, mask=None, dropout_p=0.0, seed=0, row_offset=0, q_pos=None, *,
                      planted_bug=BUG_NONE):
    """Fused attention forward. q, k, v: (B, H, T, d) float32/float64; mask: (B, T) 1 keep / 0 pad.
    ``row_offset``: global row of ``q[0]`` (keys the dropout mask, as the reference's).
    ``q_pos`` (B, Tq): q holds only these query rows, (B, H, Tq, d); out is then (B, H, Tq, d), the full
    computation's rows ``q_pos`` (dropout included: the hash is keyed by the position).

    Returns ``(out, cache)`` with out (B, H, Tq, d): a view of (B, Tq, H, d) memory, the heads already merged
    as the block reads them (``out.transpose(0, 2, 1, 3).reshape(B, Tq, H * d)`` copies nothing), and
    :func:`attention_backward` takes ``dout`` in that layout without a copy. ``planted_bug`` (tests only) makes
    the kernel deliberately wrong, to show the comparison against the reference catches it.
    """
    _check_inputs(q, k, v, mask, dropout_p, q_pos)
    B, H, Tq, d = q.shape
    T = k.shape[2]
    dtype = q.dtype
    q3 = np.ascontiguousarray(q).reshape(B * H, Tq, d)
    k3, v3 = (np.ascontiguousarray(a).reshape(B * H, T, d) for a in (k, v))
    key_bias = _key_bias(mask, B, T, dtype)
    positions = _query_positions(q_pos, B, T)
    seed_h, threshold, keep_scale = _dropout_args(dropout_p, seed, planted_bug)
    out = np.empty((B, Tq, H, d), dtype)             # the heads merged: (B, Tq, H*d) as the block reads it
    row_max = np.empty((B * H, Tq), dtype)
    row_inv_sum = np.empty((B * H, Tq), dtype)
    scale = 1.0 / math.sqrt(d)
    with _dynamic_schedule():
        forward_kernel(q3, k3, v3, key_bias, positions, H, scale, seed_h, threshold, keep_scale, planted_bug,
                       out, row_max, row_inv_sum, (int(row_offset) * H) & 0xFFFFFFFF)
    cache = {"backend": "numba", "q": q3, "k": k3, "v": v3, "out": out, "key_bias": key_bias,
             "q_pos": positions, "row_max": row_max, "row_inv_sum": row_inv_sum, "shape": (B, H, Tq, T, d),
             "dropout_p": dropout_p, "seed": seed, "scale": scale, "planted_bug": planted_bug,
             "row_offset": row_offset}
    return out.transpose(0, 2, 1, 3), cache          # (B, H, Tq, d), a view


def attention_backward(dout, cache):
    """Fused attention backward: dout (B, H, Tq, d) -> (dq (B, H, Tq, d), dk, dv (B, H, T, d)); Tq = T unless
    the forward had ``q_pos``."""
    B, H, Tq, T, d = cache["shape"]
    q3 = cache["q"]
    if not isinstance(dout, np.ndarray) or dout.shape != (B, H, Tq, d):
        raise ValueError(f"dout must be a NumPy array of shape {(B, H, Tq, d)}; got {getattr(dout, 'shape', type(dout))}")
    dout4 = np.ascontiguousarray(dout.transpose(0, 2, 1, 3), dtype=q3.dtype)   # (B, Tq, H, d): no copy when
    #                                                                            the caller kept the merged rows
    seed_h, threshold, keep_scale = _dropout_args(cache["dropout_p"], cache["seed"], cache["planted_bug"])
    dq = np.empty((B * H, Tq, d), q3.dtype)
    dk, dv = (np.empty((B * H, T, d), q3.dtype) for _ in range(2))
    with _dynamic_schedule():
        backward_kernel(q3, cache["k"], cache["v"], cache["out"], dout4, cache["key_bias"], cache["q_pos"],
                        cache["row_max"], cache["row_inv_sum"], H, cache["scale"], seed_h, threshold, keep_scale,
                        dq, dk, dv, (int(cache.get("row_offset", 0)) * H) & 0xFFFFFFFF)
    return dq.reshape(B, H, Tq, d), dk.reshape(B, H, T, d), dv.reshape(B, H, T, d)
