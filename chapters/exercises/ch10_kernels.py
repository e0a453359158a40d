"""Chapter 10 exercises: the online softmax, the heart of FlashAttention and of kernels/.

Check with:  bert-from-scratch check 10
The grader also calls your functions on READ-ONLY arrays (do not modify an input, or a cache, in
place: copy first), on float32 inputs (float32 in, float32 out: create arrays with dtype=x.dtype)
and on scores ~1000 (never exp(m) alone: only differences such as exp(m - m_new)).
"""
import math  # noqa: F401

import numpy as np  # noqa: F401


def online_softmax_update(m, l, o, scores, v_tile):
    """Fold one tile of keys into the running softmax state of every query row.

    m: (Tq,) running max of the scores seen so far (-inf at the start)
    l: (Tq,) running sum of exp(score - m)          (0 at the start)
    o: (Tq, d) running sum of exp(score - m) * v    (0 at the start)
    scores: (Tq, Tk) this tile's scores; v_tile: (Tk, d) this tile's values.

        m_new = max(m, rowmax(scores));  c = exp(m - m_new)       (the correction)
        p = exp(scores - m_new);  l_new = c * l + rowsum(p);  o_new = c * o + p @ v_tile

    Returns (m_new, l_new, o_new). Do not modify the inputs in place.
    """
    raise NotImplementedError("chapter 10: online_softmax_update")


def tiled_attention(q, k, v, block_k=16):
    """softmax(q k^T / sqrt(d)) v for one head, q, k, v: (T, d), without ever forming the T x T matrix.

    Start from m = -inf, l = 0, o = 0; for each tile of ``block_k`` keys (the last may be
    shorter) compute its scores and call online_softmax_update; return o / l.
    """
    raise NotImplementedError("chapter 10: tiled_attention")
