"""Chapters 14 and 15: planted wrong answers fail with a message that points at the mistake.

``PLANTED_TASKS`` joins ``test_exercises.PLANTED``, where every part of every chapter must have one; the
reference solutions passing and the untouched stubs failing are tested there for all chapters.
"""
from __future__ import annotations

import numpy as np

from bert_from_scratch.exercises import solutions_tasks as S


def _align_every_piece(pieces, labels):
    out = [-100]
    for n, y in zip(pieces, labels):
        out += [int(y)] * n
    return out + [-100]


def _align_no_specials(pieces, labels):
    return S.align_labels(pieces, labels)[1:-1]


def _token_forward_counts_ignored(hidden, weight, bias, labels):
    return S.token_classifier_forward(hidden, weight, bias, np.maximum(labels, 0))


def _token_backward_all_rows(cache):
    hidden, weight, log_probs, y, valid, n = cache
    return S.token_classifier_backward((hidden, weight, log_probs, y, valid, y.size))


def _span_loss_sum(start, end, s, e):
    loss, cache = S.span_loss_forward(start, end, s, e)
    return 2 * loss, cache


def _span_backward_no_half(cache):
    ds, de = S.span_loss_backward(cache)
    return 2 * ds, 2 * de


def _best_span_any_order(start, end, mask, max_len):
    ps = np.where(mask > 0, np.exp(start - start.max()), 0)
    pe = np.where(mask > 0, np.exp(end - end.max()), 0)
    ps, pe = ps / ps.sum(), pe / pe.sum()
    scores = np.outer(ps, pe)                                      # no s <= e, no length limit
    s, e = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return int(s), int(e), float(scores[s, e])


def _best_span_softmax_everywhere(start, end, mask, max_len):
    s, e, _ = S.best_span(start, end, mask, max_len)
    ps, pe = np.exp(start - start.max()), np.exp(end - end.max())
    return s, e, float(ps[s] / ps.sum() * pe[e] / pe.sum())


PLANTED_TASKS = [
    (14, "align_labels", {"align_labels": _align_every_piece}, "only a word's FIRST piece gets its label"),
    (14, "align_labels", {"align_labels": _align_no_specials}, "[CLS] and [SEP] need a label too"),
    (14, "token_classifier_forward", {"token_classifier_forward": _token_forward_counts_ignored},
     "-100 labels were counted"),
    (14, "token_classifier_backward", {"token_classifier_backward": _token_backward_all_rows},
     "gradient check failed"),
    (15, "span_loss_forward", {"span_loss_forward": _span_loss_sum}, "the span loss is their MEAN"),
    (15, "span_loss_backward", {"span_loss_backward": _span_backward_no_half}, "the 1/2 of the mean is missing"),
    (15, "best_span", {"best_span": _best_span_any_order}, "best_span picked"),
    (15, "best_span", {"best_span": _best_span_softmax_everywhere}, "over the context positions only"),
]
