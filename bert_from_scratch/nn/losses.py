r"""The two losses of a classifier that is not single-label, each a forward/backward pair.

(The single-label loss, softmax cross-entropy, is :func:`~bert_from_scratch.nn.layers.cross_entropy_forward`.)

- **mean squared error** (regression, Hugging Face's ``problem_type="regression"``, torch's ``MSELoss``):

  .. math::  L = \frac1N \sum_i (z_i - y_i)^2, \qquad \frac{\partial L}{\partial z_i} = \frac2N (z_i - y_i)

- **binary cross-entropy with logits** (multi-label: each of the K labels is its own yes/no question,
  torch's ``BCEWithLogitsLoss``), with :math:`\sigma` the sigmoid and targets :math:`y \in [0, 1]`:

  .. math::  L = \frac1N \sum_i -y_i \log\sigma(z_i) - (1 - y_i)\log(1 - \sigma(z_i)),
             \qquad \frac{\partial L}{\partial z_i} = \frac1N (\sigma(z_i) - y_i)

  computed as :math:`\max(z, 0) - z y + \log(1 + e^{-|z|})`, which never overflows.

``N`` is the number of entries (all of them count: a mean over every element, as torch's default).
Both take their array module from the inputs, so they run on NumPy or CuPy.
"""
from __future__ import annotations

from .xp import get_array_module


def mse_forward(pred, target):
    """pred, target: same shape (N...) floats -> (loss as a 0-d array, cache)."""
    diff = pred - target
    return (diff * diff).mean(), (diff,)


def mse_backward(dloss, cache):
    """-> dpred, the shape of pred."""
    (diff,) = cache
    return diff * (2.0 * float(dloss) / diff.size)


def sigmoid(z):
    """1 / (1 + e^-z) without overflow for large |z|."""
    xp = get_array_module(z)
    e = xp.exp(-xp.abs(z))                                # in (0, 1]
    return xp.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def bce_with_logits_forward(logits, target):
    """logits, target: same shape (N...); targets in [0, 1] -> (loss as a 0-d array, cache)."""
    xp = get_array_module(logits)
    per_entry = xp.maximum(logits, 0) - logits * target + xp.log1p(xp.exp(-xp.abs(logits)))
    return per_entry.mean(), (logits, target)


def bce_with_logits_backward(dloss, cache):
    """-> dlogits = (sigmoid(z) - y) / N, the shape of logits."""
    logits, target = cache
    return (sigmoid(logits) - target) * (float(dloss) / logits.size)
