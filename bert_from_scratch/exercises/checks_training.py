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
from .grader import Wrong, expect_close, expect_gradients, fixed_rng, get_function


# =======================================================================================
# Chapter 9 — AdamW, warmup, clipping
# =======================================================================================
def check_adamw_step(module):
    fn = get_function(module, "adamw_step")
    rng = fixed_rng(18)
    for lr, wd in ((1e-2, 0.01), (3e-3, 0.0), (1e-1, 0.1)):
        p0 = rng.normal(size=(4, 3))
        p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
        pr, mr, vr = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
        pl2 = p0.copy(); ml2, vl2 = np.zeros_like(p0), np.zeros_like(p0)   # coupled L2, a common mistake
        pnb = p0.copy(); mnb, vnb = np.zeros_like(p0), np.zeros_like(p0)   # no bias correction
        for t in range(1, 6):
            g = rng.normal(size=p0.shape)
            before = p.copy()
            fn(p, g.copy(), m, v, t, lr, 0.9, 0.999, 1e-6, wd)
            if np.array_equal(p, before):
                raise Wrong("adamw_step left param unchanged: update param, m and v IN PLACE (param -= ..., "
                            "m *= ...); `param = param - ...` only rebinds a local name")
            adamw_update(pr, g, mr, vr, np.empty_like(pr), lr=lr, weight_decay=wd, beta1=0.9, beta2=0.999,
                            eps=1e-6, bias_correction1=1 - 0.9 ** t, bias_correction2=1 - 0.999 ** t)
            adamw_update(pl2, g + wd * pl2, ml2, vl2, np.empty_like(pr), lr=lr, weight_decay=0.0, beta1=0.9,
                            beta2=0.999, eps=1e-6, bias_correction1=1 - 0.9 ** t, bias_correction2=1 - 0.999 ** t)
            adamw_update(pnb, g, mnb, vnb, np.empty_like(pr), lr=lr, weight_decay=wd, beta1=0.9, beta2=0.999,
                            eps=1e-6, bias_correction1=1.0, bias_correction2=1.0)
            where = f"param after step {t} (lr={lr}, weight_decay={wd})"
            expect_close(where, p, pr, rtol=1e-9, atol=1e-12, variants={
                "L2 regularisation (weight decay added to the gradient); AdamW decays the weights directly: "
                "param *= 1 - lr * weight_decay": pl2,
                "no bias correction: divide m by 1 - beta1**step and v by 1 - beta2**step": pnb})
            expect_close(f"m after step {t}", m, mr, rtol=1e-9, atol=1e-12)
            expect_close(f"v after step {t}", v, vr, rtol=1e-9, atol=1e-12)
    return "5 steps x 3 settings match the package AdamW (torch order) to 1e-9"


def check_warmup_linear_lr(module):
    fn = get_function(module, "warmup_linear_lr")
    for total, warmup, peak in ((100, 10, 1e-3), (50, 0, 5e-4), (20, 20, 1.0), (30, 7, 2e-4)):
        for step in range(total + 2):
            got, want = fn(step, total, warmup, peak), linear_warmup_decay(step, total, warmup, peak)
            try:
                got = float(got)
            except (TypeError, ValueError):
                raise Wrong(f"warmup_linear_lr must return a number; got {type(got).__name__}") from None
            if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-15):
                raise Wrong(f"warmup_linear_lr(step={step}, total_steps={total}, warmup_steps={warmup}, "
                            f"peak_lr={peak}) = {got:.6g}; expected {want:.6g} (step counts from 0: 0 at step 0, "
                            f"the peak at step == warmup_steps, then linearly down to 0 at total_steps)")
    return "matches the schedule on 4 settings, every step"


def check_clip_by_global_norm(module):
    fn = get_function(module, "clip_by_global_norm")
    rng = fixed_rng(19)
    for max_norm in (1.0, 100.0):
        grads = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=5) * 3, "c": rng.normal(size=(2, 2))}
        want = {k: g.copy() for k, g in grads.items()}
        want_norm = clip_grad_norm(want, max_norm)
        per_tensor = {k: g * min(1.0, max_norm / (np.linalg.norm(g) + 1e-6)) for k, g in grads.items()}
        norm = fn(grads, max_norm)
        try:
            norm = float(norm)
        except (TypeError, ValueError):
            raise Wrong(f"clip_by_global_norm must return the norm before clipping; got {type(norm).__name__}") from None
        if not math.isclose(norm, want_norm, rel_tol=1e-9):
            raise Wrong(f"clip_by_global_norm returned {norm:.6g}; the global norm before clipping is {want_norm:.6g} "
                        f"(sqrt of the sum of squares of ALL gradients)")
        for k in grads:
            expect_close(f"gradient {k!r} after clipping to {max_norm}", grads[k], want[k], rtol=1e-9, variants={
                "each tensor is clipped by its own norm; scale all of them by max_norm / global_norm":
                    per_tensor[k]})
    return "global-norm clipping in place matches the reference (clipped and unclipped cases)"


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
    result = fn(m.copy(), l.copy(), o.copy(), scores, v_tile)
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
    first = fn(np.full(Tq, -np.inf), np.zeros(Tq), np.zeros((Tq, d)), scores, v_tile)
    expect_close("o_new from the empty state (m = -inf, l = 0, o = 0)", first[2],
                 _online_reference(np.full(Tq, -np.inf), np.zeros(Tq), np.zeros((Tq, d)), scores, v_tile)[2])
    return "one tile folds into (m, l, o) exactly, with the exp(m - m_new) correction"


def check_tiled_attention(module):
    fn = get_function(module, "tiled_attention")
    rng = fixed_rng(21)
    T, d = 37, 8
    q, k, v = (rng.normal(0, 1.5, size=(T, d)) for _ in range(3))
    want = attention_forward_reference(q[None, None], k[None, None], v[None, None])[0][0, 0]
    unscaled = attention_forward_reference(q[None, None] * math.sqrt(d), k[None, None], v[None, None])[0][0, 0]
    for block in (16, 7, 64):
        expect_close(f"tiled_attention(block_k={block})", fn(q, k, v, block), want, variants={
            "the scores are not divided by sqrt(d)": unscaled})
    return "equals softmax(q k^T / sqrt d) v for tiles of 16, 7 and 64 keys (T = 37)"


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
    got = get_function(module, "attention_entropy")(att)
    safe = np.where(att > 0, att, 1.0)
    want = (-(att * np.log(safe)).sum(-1)).mean(-1)
    note = expect_close("attention_entropy", got, want, variants={
        "log base 2; the entropy here is in nats (np.log)": want / math.log(2),
        "summed over query rows; take the mean over rows": want * att.shape[-1]})
    return f"(L, H) entropies in nats, 0 log 0 = 0 ({note})"


def check_attention_rollout(module):
    from ..viz import attention_rollout

    att = _attention_maps()
    got = get_function(module, "attention_rollout")(att, 0.5)
    want = attention_rollout(att, residual_weight=0.5)
    fused = 0.5 * att.mean(1) + 0.5 * np.eye(att.shape[-1])
    fused /= fused.sum(-1, keepdims=True)
    reversed_order = np.empty_like(fused)
    reversed_order[0] = fused[0]
    for i in range(1, len(fused)):
        reversed_order[i] = reversed_order[i - 1] @ fused[i]
    expect_close("attention_rollout", got, want, variants={
        "the product is in the wrong order: R_l = Â_l @ R_{l-1} (the new layer on the left)": reversed_order})
    return "matches viz.attention_rollout"


# =======================================================================================
# Chapter 12 — fine-tuning
# =======================================================================================
def _classifier_inputs():
    rng = fixed_rng(23)
    return rng.normal(size=(6, 4)), rng.normal(size=(3, 4)), rng.normal(size=3), np.array([0, 2, 1, 1, 0, 2])


def check_classifier_forward(module):
    pooled, W, b, labels = _classifier_inputs()
    result = get_function(module, "classifier_forward")(pooled, W, b, labels)
    if not (isinstance(result, tuple) and len(result) == 3):
        raise Wrong("classifier_forward must return (loss, logits, cache)")
    loss, logits, _ = result
    want_logits, _ = layers.linear_forward(pooled, W, b)
    expect_close("classifier_forward logits", logits, want_logits, variants={
        "the bias is missing: logits = pooled @ W.T + b": pooled @ W.T})
    expect_close("classifier_forward loss", loss, layers.cross_entropy_forward(want_logits, labels)[0])
    return "logits and mean cross-entropy match the reference"


def check_classifier_backward(module):
    pooled, W, b, labels = _classifier_inputs()
    fwd, bwd = get_function(module, "classifier_forward"), get_function(module, "classifier_backward")
    _, _, cache = fwd(pooled, W, b, labels)
    result = bwd(cache)
    if not (isinstance(result, tuple) and len(result) == 3):
        raise Wrong("classifier_backward must return (dpooled, dweight, dbias)")
    inputs = {"pooled": pooled, "weight": W, "bias": b}
    return expect_gradients("classifier_backward", lambda: float(fwd(pooled, W, b, labels)[0]), inputs,
                            dict(zip(inputs, result)), hints={
                                "weight": "dW = dlogits^T pooled, with dlogits = (softmax - onehot) / B",
                                "pooled": "dpooled = dlogits @ W"})


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
    got = fn(preds, labels, 3)
    expect_close("macro_f1", got, want, variants={
        "this is accuracy (micro-F1); macro-F1 is the MEAN over classes of each class's F1":
            float((preds == labels).mean())})
    expect_close("macro_f1 on perfect predictions", fn(labels, labels, 3), 1.0)
    return "matches per-class F1 averaged over classes"
