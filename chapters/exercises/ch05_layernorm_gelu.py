"""Chapter 5 exercises: LayerNorm and GELU, forward and backward.

Check with:  bert-from-scratch check 5
The grader also calls your functions on READ-ONLY arrays (do not modify an input, or a cache, in
place: copy first), on float32 inputs (float32 in, float32 out: create arrays with dtype=x.dtype).
"""
import math  # noqa: F401

import numpy as np  # noqa: F401
from scipy.special import erf  # noqa: F401  (the exact GELU needs erf)


def layernorm_forward(x, gamma, beta, eps=1e-12):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta over the last axis (C features).

    x: (..., C); gamma, beta: (C,). var is the biased variance (divide by C).
    Returns (y, cache); keep xhat = (x - mean) * rstd and rstd = 1 / sqrt(var + eps) in the cache.
    """
    raise NotImplementedError("chapter 5: layernorm_forward")


def layernorm_backward(dy, cache):
    """(dx (..., C), dgamma (C,), dbeta (C,)) given dy (..., C).

    dbeta = sum of dy over all rows; dgamma = sum of dy * xhat; with dxhat = dy * gamma:
        dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))      (means over the last axis)
    Derive it yourself first: the mean and the variance depend on every x of the row.
    """
    raise NotImplementedError("chapter 5: layernorm_backward")


def gelu_forward(x):
    """The exact GELU, x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2))). Returns (y, cache)."""
    raise NotImplementedError("chapter 5: gelu_forward")


def gelu_backward(dy, cache):
    """dx = dy * (Phi(x) + x * phi(x)) with phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    raise NotImplementedError("chapter 5: gelu_backward")
