"""Chapter 3 exercises: scaled dot-product attention, forward and backward.

Check with:  bert-from-scratch check 3   (the backward is graded with a gradient check)
The grader also calls your functions on READ-ONLY arrays (do not modify an input, or a cache, in
place: copy first), on float32 inputs (float32 in, float32 out: create arrays with dtype=x.dtype)
and on scores ~1000 (exp(1000) overflows: subtract the row max).
"""
import math  # noqa: F401

import numpy as np  # noqa: F401


def attention_forward(q, k, v, mask=None):
    """out = softmax(S) V with S = Q K^T / sqrt(d) + bias.

    q, k, v: (B, H, T, d); mask: (B, T) with 1 = real token, 0 = padding, or None.
    bias[b, :, :, j] = -10000 where mask[b, j] == 0 (the KEY j is padding), else 0.
    Softmax over the last axis (the keys); subtract the row max first for stability.
    Returns (out (B, H, T, d), cache) -- the cache is whatever your backward needs
    (the probabilities P, q, k, v ...).
    """
    raise NotImplementedError("chapter 3: attention_forward")


def attention_backward(dout, cache):
    """Gradients (dq, dk, dv), each (B, H, T, d), given dout = dL/dout (B, H, T, d).

    Walk the forward backwards:
        O = P V                  ->  dV = P^T dO,   dP = dO V^T
        P = softmax(S) (rows)    ->  dS = P * (dP - rowsum(dP * P))
        S = Q K^T / sqrt(d) + b  ->  dQ = dS K / sqrt(d),   dK = dS^T Q / sqrt(d)
    (``x.swapaxes(-1, -2)`` transposes the last two axes of a 4-D array.)
    """
    raise NotImplementedError("chapter 3: attention_backward")
