r"""The heads and losses of the fine-tuning tasks, each a forward/backward pair (conventions of ``heads.py``).

- **question answering** (``qa_outputs``): one linear layer on every token, (B, T, H) -> (B, T, 2),
  split into start and end logits (B, T) each; no dropout, as Hugging Face's ``BertForQuestionAnswering``;
- **the span loss**: the mean of two cross-entropies over the T positions, one for the answer's
  first token and one for its last. A position outside the sequence is clamped to T and then
  ignored, exactly as Hugging Face does (``clamp(0, T)``, ``ignore_index=T``);
- **a sequence classifier's loss by problem type** (Hugging Face's ``config.problem_type``):
  ``"single_label_classification"`` softmax cross-entropy over K classes, ``"multi_label_classification"``
  an independent sigmoid per class (binary cross-entropy), ``"regression"`` mean squared error.

Token classification and multiple choice need no new head: they are the sequence classifier's
``classifier_head_forward`` (dropout + linear) applied to every token (B, T, H) -> (B, T, K), or to
each choice's pooled output (B*C, H) -> (B*C, 1) -> (B, C).
"""
from __future__ import annotations

from typing import NamedTuple

from ..nn.layers import cross_entropy_backward, cross_entropy_forward
from ..nn.losses import bce_with_logits_backward, bce_with_logits_forward, mse_backward, mse_forward
from ..nn.xp import get_array_module
from .blocks import dense_backward, dense_forward
from .inputs import _as_int_array
from .params import Scope

PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


# =======================================================================================
# Question answering:  start/end logits from one (2, H) linear layer on every token
# =======================================================================================
def qa_head_forward(seq, P: Scope):
    """seq: (B, T, H) -> start_logits (B, T), end_logits (B, T), cache. ``P``: scope ``qa_outputs.``."""
    logits, cache = dense_forward(seq, P)                                     # (B, T, 2)
    xp = get_array_module(logits)
    return xp.ascontiguousarray(logits[..., 0]), xp.ascontiguousarray(logits[..., 1]), cache


def qa_head_backward(dstart, dend, cache, G: Scope):
    """dstart, dend: (B, T) -> dseq (B, T, H)."""
    xp = get_array_module(dstart)
    dlogits = xp.stack([dstart, dend], axis=-1)                               # (B, T, 2): the split undone
    return dense_backward(dlogits, cache, G)


class SpanLossCache(NamedTuple):
    start: tuple            # cross_entropy cache of the start logits
    end: tuple


def span_loss_forward(start_logits, end_logits, start_positions, end_positions):
    """start/end logits (B, T), positions (B,) ints -> (loss, cache).

    loss = (CE(start_logits, start) + CE(end_logits, end)) / 2. Positions are clamped to [0, T]
    and T is ignored (an answer cut off by truncation teaches nothing), as Hugging Face does;
    a batch in which every position is ignored has loss 0 (torch gives NaN).
    """
    T = start_logits.shape[1]
    start = start_positions.clip(0, T)
    end = end_positions.clip(0, T)
    loss_s, c_s = cross_entropy_forward(start_logits, start, ignore_index=T)
    loss_e, c_e = cross_entropy_forward(end_logits, end, ignore_index=T)
    return (loss_s + loss_e) / 2, SpanLossCache(c_s, c_e)


def span_loss_backward(dloss, cache: SpanLossCache):
    """-> dstart_logits (B, T), dend_logits (B, T): each cross-entropy got half of the loss."""
    half = float(dloss) / 2
    return cross_entropy_backward(half, cache.start), cross_entropy_backward(half, cache.end)


# =======================================================================================
# A sequence classifier's loss, by problem type (Hugging Face's resolution)
# =======================================================================================
def check_problem_type(problem_type, num_labels: int):
    """The problem type a classifier with ``num_labels`` outputs trains for; ValueError when it cannot.

    ``None`` is resolved as Hugging Face does when labels arrive: one output is regression, more
    are single-label classification unless the labels are floats (then multi-label; see
    :func:`resolve_problem_type`)."""
    if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive integer; got {num_labels!r}")
    if problem_type is None:
        return None
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type must be one of {', '.join(PROBLEM_TYPES)} (or None); got {problem_type!r}")
    if problem_type == "single_label_classification" and num_labels < 2:
        raise ValueError("single_label_classification needs num_labels >= 2 (one output is regression)")
    return problem_type


def resolve_problem_type(problem_type, num_labels: int, labels):
    """Hugging Face's rule: the configured type, else regression for 1 output, else by the labels' dtype."""
    if problem_type is not None:
        return problem_type
    if num_labels == 1:
        return "regression"
    return "single_label_classification" if labels.dtype.kind in "iub" else "multi_label_classification"


def classification_loss_forward(logits, labels, problem_type, num_labels: int, xp):
    """logits (B, K), labels -> (loss as a float, cache). Labels: (B,) ints for single-label;
    (B, K) floats in [0, 1] for multi-label; (B,) or (B, K) floats for regression."""
    B = logits.shape[0]
    kind = resolve_problem_type(problem_type, num_labels, labels if hasattr(labels, "dtype") else
                                xp.asarray(labels))
    if kind == "single_label_classification":
        labels = _as_int_array("labels", labels, xp, 1)
        if labels.shape != (B,):
            raise ValueError(f"labels has shape {tuple(labels.shape)}; expected ({B},)")
        if int(labels.min()) < 0 or int(labels.max()) >= num_labels:
            raise ValueError(f"labels must be in [0, {num_labels})")
        loss, cache = cross_entropy_forward(logits, labels)
        return float(loss), (kind, cache)
    target = xp.asarray(labels, dtype=logits.dtype)
    if kind == "regression" and num_labels == 1:
        target = target.reshape(-1, 1) if target.ndim == 1 else target           # (B,) as (B, 1)
    if target.shape != logits.shape:
        raise ValueError(f"{kind} labels have shape {tuple(target.shape)}; expected {tuple(logits.shape)} "
                         f"(a float per example and label)")
    if not bool(xp.isfinite(target).all()):
        raise ValueError("labels must be finite numbers")
    if kind == "multi_label_classification":
        if float(target.min()) < 0 or float(target.max()) > 1:
            raise ValueError("multi_label_classification labels must be in [0, 1] (1 = the label applies)")
        loss, cache = bce_with_logits_forward(logits, target)
    else:
        loss, cache = mse_forward(logits, target)
    return float(loss), (kind, cache)


def classification_loss_backward(dloss, cache):
    """-> dlogits (B, K)."""
    kind, inner = cache
    if kind == "single_label_classification":
        return cross_entropy_backward(dloss, inner)
    if kind == "multi_label_classification":
        return bce_with_logits_backward(dloss, inner)
    return mse_backward(dloss, inner)
