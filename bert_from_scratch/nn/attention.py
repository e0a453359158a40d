r"""The attention core: ``softmax(Q K^T / sqrt(d) + mask) V`` with dropout on the probabilities.

This is the hot path of BERT, isolated behind one forward/backward pair so that faster
kernels (Numba on the CPU, CUDA through CuPy, in ``bert_from_scratch.kernels``) can be
swapped in. The NumPy code here is the readable *reference* every kernel is checked against.

Forward, per batch ``b`` and head ``h`` (``T`` tokens, head size ``d``):

.. math::
    S = Q K^\top / \sqrt{d} + M,\qquad P = \mathrm{softmax}_{\text{row}}(S),\qquad
    \tilde P = P \odot Z / (1-p),\qquad O = \tilde P V

where ``M[i, j] = -10000`` where key ``j`` is padding (as the original BERT) and ``Z`` is the
dropout keep-mask. Backward, given ``dO``:

.. math::
    dV = \tilde P^\top dO,\quad d\tilde P = dO\,V^\top,\quad dP = d\tilde P \odot Z/(1-p),\quad
    dS = P \odot (dP - \mathrm{rowsum}(dP \odot P)),\quad dQ = dS\,K/\sqrt{d},\quad dK = dS^\top Q/\sqrt{d}

The dropout mask is not drawn from a stateful RNG: it is a counter-based hash of
``(seed, b*H + h, row, column)``, so a backward pass (or a fused kernel that never stores
the mask) regenerates exactly the same mask, and NumPy, Numba and CUDA agree bit for bit.
"""
from __future__ import annotations

import math

import numpy as np

from .layers import softmax_forward
from .xp import get_array_module

# The constants and the counter-based dropout hash are shared bit for bit with the kernels
# (kernels/numba_attention.py, kernels/attention.cu); they live in the kernels' leaf module.
from ..kernels.kernel_args import (GOLDEN, MASK_VALUE, check_kernel_inputs, check_qkv,  # noqa: E402,F401
                                   dropout_threshold, mix32)


def dropout_keep_mask(seed: int, B: int, H: int, Tq: int, Tk: int, p: float, xp=np, row_offset: int = 0,
                      q_pos=None):
    """Boolean keep-mask ``(B, H, Tq, Tk)``: ``hash(seed, b*H+h, i, j) >> 8 >= threshold(p)``.

    hash = mix32(mix32(mix32(mix32(seed ^ GOLDEN) ^ bh) ^ i) ^ j), all in uint32, with
    ``b`` the sequence's global row: ``row_offset`` + its row here (a data-parallel rank's shard), and ``i``
    the query's position: ``q_pos[b, r]`` (B, Tq) for query rows taken from among the T positions, so that a
    row drops what it drops in the whole (B, H, T, T) computation; else ``r`` itself.
    """
    with np.errstate(over="ignore"):
        s = mix32(xp.asarray([(int(seed) & 0xFFFFFFFF) ^ GOLDEN], dtype=xp.uint32), xp)   # (1,)
        bh = (xp.arange(B * H, dtype=xp.uint32) + xp.uint32((int(row_offset) * H) & 0xFFFFFFFF)).reshape(B, H, 1, 1)
        i = (xp.arange(Tq, dtype=xp.uint32).reshape(1, 1, Tq, 1) if q_pos is None
             else xp.asarray(q_pos).astype(xp.uint32).reshape(B, 1, Tq, 1))
        j = xp.arange(Tk, dtype=xp.uint32).reshape(1, 1, 1, Tk)
        x = mix32(s.reshape(1, 1, 1, 1) ^ bh, xp)     # (B, H, 1, 1)
        x = mix32(x ^ i, xp)                          # (B, H, Tq, 1)
        x = mix32(x ^ j, xp)                          # (B, H, Tq, Tk)
    return (x >> xp.uint32(8)) >= xp.uint32(dropout_threshold(p))


def additive_mask(mask, dtype, xp=np):
    """(B, T) 1 = keep / 0 = pad  ->  (B, 1, 1, T) additive bias: 0 or MASK_VALUE."""
    return ((1.0 - mask.astype(dtype)) * dtype.type(MASK_VALUE))[:, None, None, :]


# --------------------------------------------------------------------------------------
# The NumPy reference
# --------------------------------------------------------------------------------------
def attention_forward_reference(q, k, v, mask=None, dropout_p=0.0, seed=0, row_offset=0, q_pos=None):
    """Reference attention. q, k, v: (B, H, T, d); mask: (B, T) or None. Returns (out, cache).
    ``row_offset``: global row of ``q[0]`` (keys the dropout mask, see :func:`dropout_keep_mask`).
    ``q_pos`` (B, Tq): q holds only these query rows, (B, H, Tq, d) (k, v every position); out is (B, H, Tq, d),
    equal to the full computation's rows ``q_pos``, dropout included."""
    xp = get_array_module(q, k, v)
    B, H, Tq, d = q.shape
    T = k.shape[2]
    scale = 1.0 / math.sqrt(d)
    probs = attention_probabilities(q, k, mask)                            # P: (B, H, Tq, T)
    if dropout_p > 0.0:
        keep = dropout_keep_mask(seed, B, H, Tq, T, dropout_p, xp, row_offset, q_pos)   # Z: (B, H, Tq, T)
        probs_dropped = probs * keep * q.dtype.type(1.0 / (1.0 - dropout_p))
    else:
        probs_dropped = probs
    out = xp.matmul(probs_dropped, v)                                      # O: (B, H, Tq, d)
    cache = {"backend": "numpy", "q": q, "k": k, "v": v, "probs": probs,
             "probs_dropped": probs_dropped, "dropout_p": dropout_p, "seed": seed, "scale": scale,
             "row_offset": row_offset, "q_pos": q_pos}
    return out, cache


def attention_backward_reference(dout, cache):
    """Reference backward: dout (B, H, Tq, d) -> dq (B, H, Tq, d), dk, dv (B, H, T, d) (Tq = T without q_pos)."""
    xp = get_array_module(dout)
    q, k, v, probs, probs_dropped = cache["q"], cache["k"], cache["v"], cache["probs"], cache["probs_dropped"]
    p = cache["dropout_p"]
    B, H, Tq, d = q.shape
    T = k.shape[2]
    # forward: O = P~ V
    dv = xp.matmul(probs_dropped.swapaxes(-1, -2), dout)                   # (B, H, T, d)
    dprobs = xp.matmul(dout, v.swapaxes(-1, -2))                           # dP~: (B, H, Tq, T)
    # forward: P~ = P * Z / (1 - p)
    if p > 0.0:
        dprobs *= (dropout_keep_mask(cache["seed"], B, H, Tq, T, p, xp, cache.get("row_offset", 0),
                                     cache.get("q_pos")) * q.dtype.type(1.0 / (1.0 - p)))
    cache["grad_probs"] = dprobs  # dL/dP, read by gradient-based attribution (viz)
    dq, dk = attention_probabilities_backward(dprobs, probs, q, k)
    return dq, dk, dv


def attention_probabilities_backward(dprobs, probs, q, k):
    """The backward of :func:`attention_probabilities`: dL/dP (B, H, T, T) -> dq, dk (B, H, T, d).

    Used by the reference backward above and by losses on the attention distributions themselves
    (distillation, ``training/distillation.py``), which reach Q and K through P alone."""
    xp = get_array_module(dprobs)
    scale = q.dtype.type(1.0 / math.sqrt(q.shape[-1]))
    # forward: P = softmax(S)  ->  dS = P * (dP - rowsum(dP * P))
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))
    # forward: S = Q K^T * scale (+ mask, which has no gradient)
    dq = xp.matmul(dscores, k) * scale
    dk = xp.matmul(dscores.swapaxes(-1, -2), q) * scale
    return dq, dk


# --------------------------------------------------------------------------------------
# For callers of the attention core alone: the backend's implementation (nn/backend.py)
# --------------------------------------------------------------------------------------
def attention_forward(q, k, v, mask=None, dropout_p=0.0, seed=0, backend="auto"):
    """``softmax(q k^T / sqrt(d) + mask) v`` with dropout on the probabilities.

    q, k, v: (B, H, T, d); mask: (B, T), 1 = keep, 0 = padding (or None).
    backend: "numpy" (reference), "numba" (fused CPU kernel), "cupy" (fused GPU kernel)
    or "auto" (cupy for CuPy arrays, numba when installed, else numpy); see ``nn/backend.py``.
    Returns ``(out, cache)``; pass ``cache`` to :func:`attention_backward`.
    """
    from .backend import get_backend

    check_qkv(q, k, v, mask)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1); got {dropout_p}")
    return get_backend(backend, like=q).attention_forward(q, k, v, mask, dropout_p, seed)


def attention_backward(dout, cache):
    """Gradients ``(dq, dk, dv)`` of the attention core, given ``dout`` of shape (B, H, T, d)."""
    from .backend import get_backend

    return get_backend(cache["backend"]).attention_backward(dout, cache)


def attention_probabilities(q, k, mask=None):
    """P = softmax(Q K^T / sqrt(d) + M) over the keys, (B, H, T, T), no dropout: the reference
    forward's P, and ``output_attentions`` for plots on every backend."""
    xp = get_array_module(q, k)
    scores = xp.matmul(q, k.swapaxes(-1, -2)) * q.dtype.type(1.0 / math.sqrt(q.shape[-1]))   # (B, H, T, T)
    if mask is not None:
        scores += additive_mask(mask, q.dtype, xp)                          # pads -> -10000
    return softmax_forward(scores)[0]                                      # stable: the row max subtracted
