"""Checks of chapters 14 (token classification) and 15 (question answering).

Forward passes are compared with the package's code (``data.token_classification``,
``nn.layers.cross_entropy_*``, ``model.task_heads.span_loss_*``, ``data.question_answering``); backward
passes go through the finite-difference checker; typical mistakes are named when an answer matches them.
"""
from __future__ import annotations

import numpy as np

from ..constants import IGNORE_INDEX
from ..nn import layers
from .grader import (STABILITY_HINT, Wrong, expect_close, expect_dtype, expect_gradients, fixed_rng, freeze, frozen,
                     get_function)


# =======================================================================================
# Chapter 14 — token classification
# =======================================================================================
def check_align_labels(module):
    fn = get_function(module, "align_labels")
    cases = [([1, 2, 1, 3], [5, 0, 0, 1], [-100, 5, 0, -100, 0, 1, -100, -100, -100]),
             ([2], [7], [-100, 7, -100, -100]),
             ([1, 0, 2], [1, 2, 3], [-100, 1, 3, -100, -100])]             # a word with no piece has no label
    for pieces, labels, want in cases:
        got = fn(list(pieces), list(labels))
        got = [int(x) for x in np.asarray(got).ravel()] if got is not None else None
        if got == want:
            continue
        hint = ""
        if got is not None and len(got) == len(want) - 2:
            hint = ": [CLS] and [SEP] need a label too (-100)"
        elif got is not None and len(got) == len(want) and got[-2] not in (-100,) and pieces[-1] > 1:
            hint = ": only a word's FIRST piece gets its label; the others get -100"
        elif got is not None and len(got) == len(want) and got.count(-100) < want.count(-100):
            hint = ": only a word's FIRST piece gets its label; the others get -100"
        raise Wrong(f"align_labels({pieces}, {labels}) = {got}; expected {want}{hint}")
    return "first piece labelled, continuation pieces and specials -100, empty words skipped"


def _token_inputs(dtype=np.float64):
    rng = fixed_rng(41)
    hidden = rng.normal(size=(2, 5, 4)).astype(dtype)
    W, b = rng.normal(size=(3, 4)).astype(dtype), rng.normal(size=3).astype(dtype)
    labels = np.array([[IGNORE_INDEX, 2, IGNORE_INDEX, 0, IGNORE_INDEX],
                       [IGNORE_INDEX, 1, 1, IGNORE_INDEX, IGNORE_INDEX]])
    return hidden, W, b, labels


def _token_reference(hidden, W, b, labels):
    logits, _ = layers.linear_forward(hidden, W, b)
    loss, cache = layers.cross_entropy_forward(logits.reshape(-1, 3), labels.reshape(-1))
    dlogits = layers.cross_entropy_backward(1.0, cache)
    h2 = hidden.reshape(-1, hidden.shape[-1])
    return float(loss), logits, ((dlogits @ W).reshape(hidden.shape), dlogits.T @ h2, dlogits.sum(axis=0))


def _token(module, hidden, W, b, labels):
    result = get_function(module, "token_classifier_forward")(*frozen(hidden, W, b, labels))
    if not (isinstance(result, tuple) and len(result) == 3):
        raise Wrong("token_classifier_forward must return (loss, logits, cache)")
    return result


def check_token_classifier_forward(module):
    hidden, W, b, labels = _token_inputs()
    loss, logits, _ = _token(module, hidden, W, b, labels)
    want_loss, want_logits, _ = _token_reference(hidden, W, b, labels)
    expect_close("token_classifier_forward logits", logits, want_logits)
    everywhere = float(layers.cross_entropy_forward(want_logits.reshape(-1, 3), np.maximum(labels, 0).reshape(-1),
                                                    ignore_index=-1)[0])
    over_all = float(layers.cross_entropy_forward(want_logits.reshape(-1, 3), labels.reshape(-1))[0]) * 4 / 10
    expect_close("token_classifier_forward loss", loss, want_loss, variants={
        "-100 labels were counted (as class 0): skip them": everywhere,
        "the sum was divided by all B*T positions: divide by the number of labelled ones": over_all})
    with np.errstate(all="ignore"):
        big = _token(module, hidden * 500.0, W, b, labels)[0]
    expect_close("token_classifier_forward loss for logits ~1000", big,
                 _token_reference(hidden * 500.0, W, b, labels)[0], nonfinite=STABILITY_HINT)
    expect_dtype("token_classifier_forward logits", _token(module, *_token_inputs(np.float32)[:3], labels)[1])
    return "logits and the mean cross-entropy over labelled tokens match, stable for logits ~1000"


def check_token_classifier_backward(module):
    hidden, W, b, labels = _token_inputs()
    fwd, bwd = get_function(module, "token_classifier_forward"), get_function(module, "token_classifier_backward")
    result = bwd(freeze(_token(module, hidden, W, b, labels)[2]))
    if not (isinstance(result, tuple) and len(result) == 3):
        raise Wrong("token_classifier_backward must return (dhidden, dweight, dbias)")
    inputs = {"hidden": hidden, "weight": W, "bias": b}
    note = expect_gradients("token_classifier_backward", lambda: float(fwd(hidden, W, b, labels)[0]), inputs,
                            dict(zip(inputs, result)), hints={
                                "hidden": "dhidden = dlogits @ W, zero at the positions labelled -100",
                                "weight": "dW = dlogits^T hidden over all B*T rows, dlogits = (softmax - onehot) / n",
                                "bias": "dbias = the sum over all rows of dlogits (0 on ignored rows)"})
    return note


# =======================================================================================
# Chapter 15 — question answering
# =======================================================================================
def _span_inputs():
    rng = fixed_rng(43)
    return rng.normal(size=(3, 7)), rng.normal(size=(3, 7)), np.array([1, 4, 2]), np.array([2, 4, 5])


def _span_reference(start, end, s, e):
    from ..model.task_heads import span_loss_backward, span_loss_forward

    loss, cache = span_loss_forward(start, end, s, e)
    return float(loss), span_loss_backward(1.0, cache)


def check_span_loss_forward(module):
    start, end, s, e = _span_inputs()
    fn = get_function(module, "span_loss_forward")
    result = fn(*frozen(start, end, s, e))
    if not (isinstance(result, tuple) and len(result) == 2):
        raise Wrong("span_loss_forward must return (loss, cache)")
    want, _ = _span_reference(start, end, s, e)
    ce = [float(layers.cross_entropy_forward(z, p)[0]) for z, p in ((start, s), (end, e))]
    expect_close("span_loss_forward loss", result[0], want, variants={
        "the two cross-entropies were added: the span loss is their MEAN, (CE_start + CE_end) / 2": sum(ce),
        "only the start cross-entropy": ce[0]})
    with np.errstate(all="ignore"):
        big = fn(*frozen(start * 1000.0, end * 1000.0, s, e))[0]
    expect_close("span_loss_forward for logits ~1000", big, _span_reference(start * 1000.0, end * 1000.0, s, e)[0],
                 nonfinite=STABILITY_HINT)
    return "(CE(start) + CE(end)) / 2 matches model.task_heads.span_loss_forward"


def check_span_loss_backward(module):
    start, end, s, e = _span_inputs()
    fwd, bwd = get_function(module, "span_loss_forward"), get_function(module, "span_loss_backward")
    result = bwd(freeze(fwd(*frozen(start, end, s, e))[1]))
    if not (isinstance(result, tuple) and len(result) == 2):
        raise Wrong("span_loss_backward must return (dstart_logits, dend_logits)")
    inputs = {"start_logits": start, "end_logits": end}
    want = _span_reference(start, end, s, e)[1]
    return expect_gradients("span_loss_backward", lambda: float(fwd(start, end, s, e)[0]), inputs,
                            dict(zip(inputs, result)), variants={
                                k: {"the 1/2 of the mean is missing: each gradient is (softmax - onehot) / (2 B)":
                                    2 * w} for k, w in zip(inputs, want)})


def check_best_span(module):
    from ..data.question_answering import select_spans

    fn = get_function(module, "best_span")
    rng = fixed_rng(45)
    for case in range(20):
        T = 12
        start, end = rng.normal(0, 3, T), rng.normal(0, 3, T)
        mask = np.zeros(T, dtype=np.int64)
        mask[4:T - 1] = 1
        max_len = 1 + case % 4
        got = fn(*frozen(start, end, mask), max_len)
        if not (isinstance(got, tuple) and len(got) == 3):
            raise Wrong("best_span must return (start, end, score)")
        # the package's decoding, with [CLS] outside the context: the same as a softmax over the context only
        s, e, sc = select_spans(start, end, 1 - mask, None, 1, max_len)
        if (int(got[0]), int(got[1])) != (int(s[0]), int(e[0])):
            hint = ""
            if int(got[1]) < int(got[0]):
                hint = ": the end must not come before the start"
            elif int(got[1]) - int(got[0]) + 1 > max_len:
                hint = f": the span is longer than max_answer_len={max_len}"
            elif not (mask[int(got[0])] and mask[int(got[1])]):
                hint = ": the span must lie in the context (context_mask == 1)"
            raise Wrong(f"best_span picked ({int(got[0])}, {int(got[1])}); expected ({int(s[0])}, {int(e[0])}) "
                        f"with max_answer_len={max_len}{hint}")
        everywhere = np.exp(start - start.max()) / np.exp(start - start.max()).sum()
        everywhere_end = np.exp(end - end.max()) / np.exp(end - end.max()).sum()
        expect_close("best_span score", got[2], sc[0], variants={
            "the softmax ran over all positions: take it over the context positions only":
                everywhere[int(s[0])] * everywhere_end[int(e[0])]})
    return "best start <= end within max_answer_len over the context, as data.question_answering"
