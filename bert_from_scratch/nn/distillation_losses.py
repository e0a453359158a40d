r"""The two losses of layer-wise distillation (TinyBERT, Jiao et al. 2020), each a forward/backward pair.

A student (here 2 x 128) learns to reproduce, layer by layer, what a teacher (all-MiniLM-L6-v2, 6 x 384)
computes on the same tokens. ``B`` = batch, ``T`` = tokens, ``Hs``/``Ht`` = student/teacher widths,
``hs``/``ht`` = their heads; ``mask`` (B, T) is 1 at real tokens, 0 at padding, and only real tokens count.

**Hidden states.** The widths differ, so a learned projection :math:`W\in\mathbb{R}^{H_t\times H_s}, b`
maps the student's states into the teacher's space (TinyBERT's :math:`W_h`), and the loss is the mean
squared error over the real tokens' coordinates:

.. math::
    L_{\text{hid}} = \frac{1}{n\,H_t}\sum_{(b,t)\,\text{real}} \lVert W h^s_{bt} + b - h^t_{bt}\rVert^2,
    \qquad \frac{\partial L}{\partial (W h^s_{bt} + b)} = \frac{2}{n H_t}\,(W h^s_{bt} + b - h^t_{bt})

**Attention distributions.** TinyBERT matches the attention of head *i* to head *i*, which needs as many
heads in the student as in the teacher (12 heads of width 128/12 do not exist). We compare the
**head-averaged** distributions instead (an average of distributions is a distribution): for each real
query row, :math:`a^s = \frac{1}{h_s}\sum_h P^s_h`, :math:`a^t = \frac{1}{h_t}\sum_h P^t_h`, and the loss is
the Kullback-Leibler divergence from the teacher's row to the student's (MiniLM's choice of divergence),
averaged over the ``n`` real query rows, padding keys excluded (their probability is 0 on both sides):

.. math::
    L_{\text{att}} = \frac{1}{n}\sum_{(b,i)\,\text{real}}\ \sum_{j\,\text{real}} a^t_{bij}\,
    \log\frac{a^t_{bij}}{a^s_{bij}},
    \qquad \frac{\partial L}{\partial P^s_{bhij}} = -\frac{1}{n\,h_s}\,\frac{a^t_{bij}}{a^s_{bij}}

That gradient on the probabilities goes back through the student's softmax to its queries and keys
(``nn/attention.py: attention_probabilities_backward``, called by the attention block's backward).
"""
from __future__ import annotations

from .layers import linear_backward, linear_forward
from .xp import get_array_module


def hidden_state_loss_forward(h_s, weight, bias, h_t, mask):
    """h_s (B, T, Hs), weight (Ht, Hs), bias (Ht,), h_t (B, T, Ht), mask (B, T) -> (loss, cache)."""
    proj, c_proj = linear_forward(h_s, weight, bias)                          # (B, T, Ht)
    real = mask.astype(h_s.dtype)[..., None]                                  # (B, T, 1)
    diff = (proj - h_t.astype(h_s.dtype, copy=False)) * real                  # padding rows are 0
    n = float(real.sum()) * h_t.shape[-1]
    return float((diff * diff).sum() / n), (c_proj, diff, n)


def hidden_state_loss_backward(dloss, cache):
    """dloss: scalar -> (dh_s (B, T, Hs), dweight (Ht, Hs), dbias (Ht,))."""
    c_proj, diff, n = cache
    dproj = diff * diff.dtype.type(2.0 * dloss / n)                           # (B, T, Ht)
    return linear_backward(dproj, c_proj)


def head_average(probs):
    """(B, h, T, T) attention probabilities -> (B, T, T), their mean over the heads (a distribution per row)."""
    return probs.mean(axis=1)


def attention_loss_forward(p_s, a_t, mask):
    """p_s (B, hs, T, T) the student's attention probabilities, a_t (B, T, T) the teacher's head-averaged
    ones (:func:`head_average`), mask (B, T) -> (loss, cache)."""
    xp = get_array_module(p_s)
    dtype = p_s.dtype
    a_s = head_average(p_s)                                                   # (B, T, T)
    a_t = a_t.astype(dtype, copy=False)
    real = mask.astype(bool)
    pair = real[:, :, None] & real[:, None, :]                                # real query row and real key
    tiny = xp.finfo(dtype).tiny
    a_s_safe = xp.maximum(a_s, tiny)                                          # a softmax is > 0; underflow guard
    log_ratio = xp.log(xp.maximum(a_t, tiny)) - xp.log(a_s_safe)
    n = float(real.sum())
    loss = float(xp.where(pair, a_t * log_ratio, 0).sum() / n)
    return loss, (a_s_safe, a_t, pair, n, p_s.shape[1])


def attention_loss_backward(dloss, cache):
    """dloss: scalar -> dp_s (B, hs, T, T): every student head gets 1/hs of the averaged row's gradient."""
    a_s, a_t, pair, n, heads = cache
    xp = get_array_module(a_s)
    da_s = xp.where(pair, a_t / a_s, 0).astype(a_s.dtype) * a_s.dtype.type(-dloss / (n * heads))   # (B, T, T)
    return xp.broadcast_to(da_s[:, None], (da_s.shape[0], heads) + da_s.shape[1:]).copy()
