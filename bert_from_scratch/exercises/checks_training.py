r"""Checks for the later chapters: the training loop (9), kernels (10), what attention looks at
(11) and fine-tuning (12).

Each check takes the learner's module and returns a short success note or raises
:class:`~.grader.Wrong`; :mod:`.checks` lists them per chapter.
"""
from __future__ import annotations

import math

import numpy as np

from ..nn import layers
from ..nn.attention import attention_forward_reference
from ..training.optim import adamw_update, clip_grad_norm, linear_warmup_decay
from .grader import (STABILITY_HINT, Wrong, expect_close, expect_dtype, expect_gradients, fixed_rng, freeze,
                     frozen, get_function)


# =======================================================================================
# Chapter 9 — AdamW, warmup, clipping
# =======================================================================================
NO_BIAS_CORRECTION = (
    "no bias correction: divide m by 1 - beta1**step and v by 1 - beta2**step, as this chapter (and its "
    "docstring) asks. The original BERT optimizer (google-research/bert's AdamWeightDecayOptimizer) omitted "
    "the bias correction; torch.optim.AdamW and Hugging Face include it, and so does this exercise")


def _adamw_variant(p, g, m, v, t, lr, wd, eps=1e-6, decay_after=False, eps_hat=False):
    """The chapter's (torch's) update, or with a flag one of its typical near-misses, to name them."""
    b1, b2 = 0.9, 0.999
    if not decay_after:
        p *= 1 - lr * wd
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * g * g
    if eps_hat:                                   # the Adam paper's "efficient" form: eps not scaled
        p -= lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
    else:
        p -= lr / (1 - b1 ** t) * m / (np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
    if decay_after:
        p -= lr * wd * p


def check_adamw_step(module):
    fn = get_function(module, "adamw_step")
    rng = fixed_rng(18)
    for lr, wd in ((1e-2, 0.01), (3e-3, 0.0), (1e-1, 0.1)):
        p0 = rng.normal(size=(4, 3))
        p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
        pr, mr, vr = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
        states = {name: [p0.copy(), np.zeros_like(p0), np.zeros_like(p0)] for name in ("l2", "nb", "after", "hat")}
        for t in range(1, 6):
            g = rng.normal(size=p0.shape)
            before = {"param": p.copy(), "m": m.copy(), "v": v.copy()}
            fn(p, frozen(g), m, v, t, lr, 0.9, 0.999, 1e-6, wd)          # grad is read-only
            for name, array in (("param", p), ("m", m), ("v", v)):
                if np.array_equal(array, before[name]):
                    raise Wrong(f"adamw_step left {name} unchanged: update param, m and v IN PLACE (param -= ..., "
                                f"m *= ..., m += ...); `{name} = {name} - ...` only rebinds a local name")
            adamw_update(pr, g, mr, vr, np.empty_like(pr), lr=lr, weight_decay=wd, beta1=0.9, beta2=0.999,
                         eps=1e-6, bias_correction1=1 - 0.9 ** t, bias_correction2=1 - 0.999 ** t)
            pl2, ml2, vl2 = states["l2"]
            adamw_update(pl2, g + wd * pl2, ml2, vl2, np.empty_like(pr), lr=lr, weight_decay=0.0, beta1=0.9,
                         beta2=0.999, eps=1e-6, bias_correction1=1 - 0.9 ** t, bias_correction2=1 - 0.999 ** t)
            pnb, mnb, vnb = states["nb"]
            adamw_update(pnb, g, mnb, vnb, np.empty_like(pr), lr=lr, weight_decay=wd, beta1=0.9, beta2=0.999,
                         eps=1e-6, bias_correction1=1.0, bias_correction2=1.0)
            for name, change in (("after", dict(decay_after=True)), ("hat", dict(eps_hat=True))):
                pv, mv, vv = states[name]
                _adamw_variant(pv, g, mv, vv, t, lr, wd, **change)
            where = f"param after step {t} (lr={lr}, weight_decay={wd})"
            expect_close(where, p, pr, rtol=1e-7, atol=1e-10, variants={
                "L2 regularisation (weight decay added to the gradient); AdamW decays the weights directly: "
                "param *= 1 - lr * weight_decay": pl2,
                NO_BIAS_CORRECTION: pnb,
                "the weight decay is applied after the Adam step (to the updated weights); this chapter, as "
                "torch.optim.AdamW, decays first: param *= 1 - lr * weight_decay, then the Adam step":
                    states["after"][0],
                "eps is added to the uncorrected sqrt(v), as in the Adam paper's 'efficient' form "
                "lr * sqrt(1 - beta2**step) / (1 - beta1**step) * m / (sqrt(v) + eps); this chapter, as "
                "torch.optim.AdamW, adds it to the corrected one: m_hat / (sqrt(v) / sqrt(1 - beta2**step) + eps)":
                    states["hat"][0]})
            expect_close(f"m after step {t}", m, mr, rtol=1e-7, atol=1e-10)
            expect_close(f"v after step {t}", v, vr, rtol=1e-7, atol=1e-10)
    return "5 steps x 3 settings match the package AdamW (torch.optim.AdamW's update, bias-corrected)"


def check_warmup_linear_lr(module):
    fn = get_function(module, "warmup_linear_lr")
    for total, warmup, peak in ((100, 10, 1e-3), (50, 0, 5e-4), (20, 20, 1.0), (30, 7, 2e-4)):
        for step in range(total + 2):
            try:
                got = fn(step, total, warmup, peak)
            except ZeroDivisionError as e:
                raise Wrong(f"warmup_linear_lr(step={step}, total_steps={total}, warmup_steps={warmup}) raised "
                            f"ZeroDivisionError ({e}): warmup_steps may be 0 (no warmup) or equal to "
                            f"total_steps; do not divide by them then") from None
            want = linear_warmup_decay(step, total, warmup, peak)
            try:
                got = float(got)
            except (TypeError, ValueError):
                raise Wrong(f"warmup_linear_lr must return a number; got {type(got).__name__}") from None
            if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-15):
                one_based = math.isclose(got, linear_warmup_decay(min(step + 1, total + 1), total, warmup, peak),
                                         rel_tol=1e-9, abs_tol=1e-15)
                raise Wrong(f"warmup_linear_lr(step={step}, total_steps={total}, warmup_steps={warmup}, "
                            f"peak_lr={peak}) = {got:.9g}; expected {want:.9g}"
                            + (". Looks like: the step is counted from 1" if one_based else "")
                            + " (step counts from 0: 0 at step 0, the peak at step == warmup_steps, then linearly "
                              "down to 0 at total_steps)")
    return "matches the schedule on 4 settings, every step"


def check_clip_by_global_norm(module):
    fn = get_function(module, "clip_by_global_norm")
    rng = fixed_rng(19)
    for max_norm in (1.0, 100.0):
        grads = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=5) * 3, "c": rng.normal(size=(2, 2))}
        want = {k: g.copy() for k, g in grads.items()}
        want_norm = clip_grad_norm(want, max_norm)
        per_tensor = {k: g * min(1.0, max_norm / (np.linalg.norm(g) + 1e-6)) for k, g in grads.items()}
        textbook = {k: g * min(1.0, max_norm / want_norm) for k, g in grads.items()}
        norm = fn(grads, max_norm)
        try:
            norm = float(norm)
        except (TypeError, ValueError):
            raise Wrong(f"clip_by_global_norm must return the norm before clipping; got {type(norm).__name__}") from None
        if not math.isclose(norm, want_norm, rel_tol=1e-7):
            raise Wrong(f"clip_by_global_norm returned {norm:.9g}; the global norm before clipping is {want_norm:.9g} "
                        f"(sqrt of the sum of squares of ALL gradients)")
        for k in grads:
            # rtol 1e-5: the textbook max_norm / norm and torch's max_norm / (norm + 1e-6) are both right
            expect_close(f"gradient {k!r} after clipping to {max_norm}", grads[k], want[k], rtol=1e-5, atol=1e-9,
                         variants={
                             "each tensor is clipped by its own norm; scale all of them by max_norm / global_norm":
                                 per_tensor[k],
                             "the coefficient max_norm / norm; the package, as torch's clip_grad_norm_, uses "
                             "max_norm / (norm + 1e-6), which differs here": textbook[k]})
    return ("global-norm clipping in place matches the reference (clipped and unclipped cases; max_norm / norm "
            "and max_norm / (norm + 1e-6) both accepted)")


# =======================================================================================
# Chapter 10 — kernels: the online softmax
# =======================================================================================
def _online_reference(m, l, o, scores, v_tile):
    m_new = np.maximum(m, scores.max(axis=1))
    c = np.exp(m - m_new)
    p = np.exp(scores - m_new[:, None])
    return m_new, c * l + p.sum(axis=1), c[:, None] * o + p @ v_tile


def check_online_softmax_update(module):
    fn = get_function(module, "online_softmax_update")
    rng = fixed_rng(20)
    Tq, Tk, d = 6, 5, 3
    m = np.array([0.5, 3.0, -1.0, 2.0, 10.0, 0.0])           # some rows will get a new maximum, some not
    l = rng.uniform(1, 3, size=Tq)
    o = rng.normal(size=(Tq, d))
    scores = rng.normal(0, 2, size=(Tq, Tk))
    v_tile = rng.normal(size=(Tk, d))
    result = fn(*frozen(m, l, o, scores, v_tile))                # read-only: the docstring says do not modify
    if not (isinstance(result, tuple) and len(result) == 3):
        raise Wrong("online_softmax_update must return (m_new, l_new, o_new)")
    want = _online_reference(m, l, o, scores, v_tile)
    m_nc = np.maximum(m, scores.max(axis=1))
    p_nc = np.exp(scores - m_nc[:, None])
    no_corr = (m_nc, l + p_nc.sum(axis=1), o + p_nc @ v_tile)
    expect_close("m_new (running maximum)", result[0], want[0])
    expect_close("l_new (running sum)", result[1], want[1], variants={
        "the correction is missing: when the maximum grows from m to m_new, multiply the old sum by "
        "exp(m - m_new)": no_corr[1]})
    expect_close("o_new (running output)", result[2], want[2], variants={
        "the correction is missing: the old output must also be multiplied by exp(m - m_new)": no_corr[2]})
    empty = (np.full(Tq, -np.inf), np.zeros(Tq), np.zeros((Tq, d)))
    first = fn(*frozen(*empty, scores, v_tile))
    expect_close("o_new from the empty state (m = -inf, l = 0, o = 0)", first[2],
                 _online_reference(*empty, scores, v_tile)[2])
    big = (m * 300.0, l, o, scores * 300.0, v_tile)            # scores ~1000: exp(score) alone overflows
    with np.errstate(all="ignore"):
        got = fn(*frozen(*big))
    for name, g, w in zip(("m_new", "l_new", "o_new"), got, _online_reference(*big)):
        expect_close(f"{name} for scores ~1000", g, w, nonfinite=STABILITY_HINT + " (here: exp(scores - m_new) "
                     "and the correction exp(m - m_new), never exp(m) / exp(m_new))")
    got32 = fn(*frozen(*(a.astype(np.float32) for a in (m, l, o, scores, v_tile))))
    for name, g in zip(("m_new", "l_new", "o_new"), got32):
        expect_dtype(f"online_softmax_update's {name}", g)
    return "one tile folds into (m, l, o) exactly, with the exp(m - m_new) correction; stable, float32 kept"


def check_tiled_attention(module):
    fn = get_function(module, "tiled_attention")
    rng = fixed_rng(21)
    T, d = 37, 8
    q, k, v = (rng.normal(0, 1.5, size=(T, d)) for _ in range(3))
    want = attention_forward_reference(q[None, None], k[None, None], v[None, None])[0][0, 0]
    unscaled = attention_forward_reference(q[None, None] * math.sqrt(d), k[None, None], v[None, None])[0][0, 0]
    for block in (16, 7, 64):
        expect_close(f"tiled_attention(block_k={block})", fn(*frozen(q, k, v), block), want, variants={
            "the scores are not divided by sqrt(d)": unscaled})
    with np.errstate(all="ignore"):
        got = fn(*frozen(q * 300.0, k, v), 16)
    expect_close("tiled_attention for scores ~1000", got,
                 attention_forward_reference(q[None, None] * 300.0, k[None, None], v[None, None])[0][0, 0],
                 nonfinite=STABILITY_HINT)
    got32 = fn(*frozen(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32)), 16)
    expect_dtype("tiled_attention output", got32)
    expect_close("tiled_attention for float32 inputs", got32, want, rtol=1e-4, atol=1e-5)
    return "equals softmax(q k^T / sqrt d) v for tiles of 16, 7 and 64 keys (T = 37), for scores ~1000, in float32"


# =======================================================================================
# Chapter 11 — what attention looks at
# =======================================================================================
def _attention_maps():
    rng = fixed_rng(22)
    scores = rng.normal(0, 2, size=(3, 2, 6, 6))
    scores[0, 0, :, 4:] = -np.inf                                 # exact zeros: 0 log 0 must count as 0
    att = np.exp(scores - scores.max(-1, keepdims=True))
    return att / att.sum(-1, keepdims=True)


def check_attention_entropy(module):
    att = _attention_maps()
    got = get_function(module, "attention_entropy")(frozen(att))
    safe = np.where(att > 0, att, 1.0)
    want = (-(att * np.log(safe)).sum(-1)).mean(-1)
    note = expect_close("attention_entropy", got, want, variants={
        "log base 2; the entropy here is in nats (np.log)": want / math.log(2),
        "summed over query rows; take the mean over rows": want * att.shape[-1]})
    expect_dtype("attention_entropy", get_function(module, "attention_entropy")(frozen(att.astype(np.float32))))
    return f"(L, H) entropies in nats, 0 log 0 = 0 ({note})"


def check_attention_rollout(module):
    from ..viz import attention_rollout

    att = _attention_maps()
    got = get_function(module, "attention_rollout")(frozen(att), 0.5)
    want = attention_rollout(att, residual_weight=0.5)
    fused = 0.5 * att.mean(1) + 0.5 * np.eye(att.shape[-1])
    fused /= fused.sum(-1, keepdims=True)
    reversed_order = np.empty_like(fused)
    reversed_order[0] = fused[0]
    for i in range(1, len(fused)):
        reversed_order[i] = reversed_order[i - 1] @ fused[i]
    expect_close("attention_rollout", got, want, variants={
        "the product is in the wrong order: R_l = Â_l @ R_{l-1} (the new layer on the left)": reversed_order})
    expect_dtype("attention_rollout", get_function(module, "attention_rollout")(frozen(att.astype(np.float32)), 0.5))
    return "matches viz.attention_rollout"


# =======================================================================================
# Chapter 12 — fine-tuning
# =======================================================================================
def _classifier_inputs():
    rng = fixed_rng(23)
    return rng.normal(size=(6, 4)), rng.normal(size=(3, 4)), rng.normal(size=3), np.array([0, 2, 1, 1, 0, 2])


def _classifier_reference(pooled, W, b, labels):
    logits, _ = layers.linear_forward(pooled, W, b)
    loss, cache = layers.cross_entropy_forward(logits, labels)
    dlogits = layers.cross_entropy_backward(1.0, cache)
    return float(loss), logits, (dlogits @ W, dlogits.T @ pooled, dlogits.sum(axis=0))


def _classifier(module, pooled, W, b, labels):
    result = get_function(module, "classifier_forward")(*frozen(pooled, W, b, labels))
    if not (isinstance(result, tuple) and len(result) == 3):
        raise Wrong("classifier_forward must return (loss, logits, cache)")
    return result


def check_classifier_forward(module):
    pooled, W, b, labels = _classifier_inputs()
    loss, logits, _ = _classifier(module, pooled, W, b, labels)
    want_loss, want_logits, _ = _classifier_reference(pooled, W, b, labels)
    expect_close("classifier_forward logits", logits, want_logits, variants={
        "the bias is missing: logits = pooled @ W.T + b": pooled @ W.T})
    expect_close("classifier_forward loss", loss, want_loss)
    with np.errstate(all="ignore"):                             # logits ~1000: exp overflows without the shift
        loss, _, _ = _classifier(module, pooled * 500.0, W, b, labels)
    expect_close("classifier_forward loss for logits ~1000", loss,
                 _classifier_reference(pooled * 500.0, W, b, labels)[0], nonfinite=STABILITY_HINT)
    _, logits, _ = _classifier(module, *(a.astype(np.float32) for a in (pooled, W, b)), labels)
    expect_dtype("classifier_forward logits", logits)
    return "logits and mean cross-entropy match the reference, stable for logits ~1000, float32 kept"


def check_classifier_backward(module):
    pooled, W, b, labels = _classifier_inputs()
    fwd, bwd = get_function(module, "classifier_forward"), get_function(module, "classifier_backward")
    result = bwd(freeze(_classifier(module, pooled, W, b, labels)[2]))
    if not (isinstance(result, tuple) and len(result) == 3):
        raise Wrong("classifier_backward must return (dpooled, dweight, dbias)")
    inputs = {"pooled": pooled, "weight": W, "bias": b}
    note = expect_gradients("classifier_backward", lambda: float(fwd(pooled, W, b, labels)[0]), inputs,
                            dict(zip(inputs, result)), hints={
                                "weight": "dW = dlogits^T pooled, with dlogits = (softmax - onehot) / B",
                                "pooled": "dpooled = dlogits @ W",
                                "bias": "dbias = the sum over the batch of dlogits"})
    with np.errstate(all="ignore"):
        result = bwd(freeze(_classifier(module, pooled * 500.0, W, b, labels)[2]))
    for name, g, w in zip(inputs, result, _classifier_reference(pooled * 500.0, W, b, labels)[2]):
        expect_close(f"classifier_backward's d{name} for logits ~1000", g, w, nonfinite=STABILITY_HINT)
    result = bwd(freeze(_classifier(module, *(a.astype(np.float32) for a in (pooled, W, b)), labels)[2]))
    for name, g in zip(inputs, result):
        expect_dtype(f"classifier_backward's d{name}", g)
    return note + "; stable for logits ~1000, float32 kept"


def check_macro_f1(module):
    fn = get_function(module, "macro_f1")
    rng = fixed_rng(24)
    labels = rng.integers(0, 3, size=200)
    preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 3, size=200))
    preds[:40] = 0                                              # a biased classifier: micro != macro
    want = []
    for c in range(3):
        tp = np.sum((preds == c) & (labels == c))
        want.append(2 * tp / (2 * tp + np.sum((preds == c) & (labels != c)) + np.sum((preds != c) & (labels == c))))
    want = float(np.mean(want))
    got = fn(*frozen(preds, labels), 3)
    expect_close("macro_f1", got, want, variants={
        "this is accuracy (micro-F1); macro-F1 is the MEAN over classes of each class's F1":
            float((preds == labels).mean())})
    expect_close("macro_f1 on perfect predictions", fn(*frozen(labels, labels), 3), 1.0)
    absent = "a class that is neither predicted nor present has F1 = 0 (the docstring: 0 if the denominator is 0)"
    try:
        with np.errstate(all="ignore"):
            got = fn(*frozen(labels, labels), 4)              # class 3 never occurs: 2*0 / (0 + 0 + 0)
    except ZeroDivisionError as e:
        raise Wrong(f"macro_f1 with num_labels=4 (class 3 absent) raised ZeroDivisionError ({e}): {absent}") from None
    expect_close("macro_f1 of perfect predictions with num_labels=4 (class 3 absent)", got, 0.75, nonfinite=absent)
    return "matches per-class F1 averaged over classes (an absent class counts 0)"
