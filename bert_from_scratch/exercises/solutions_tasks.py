"""Reference solutions of chapters 14 (token classification) and 15 (question answering).

``solutions.py`` re-exports them, so ``bert-from-scratch check 14 --solutions`` grades these.
"""
from __future__ import annotations

import numpy as np

from ..constants import IGNORE_INDEX, MASK_VALUE


# =======================================================================================
# Chapter 14 — token classification
# =======================================================================================
def align_labels(pieces_per_word, word_labels):
    """[CLS] + pieces + [SEP]: a word's label on its first piece, -100 on the others and on the specials."""
    labels = [IGNORE_INDEX]
    for n, label in zip(pieces_per_word, word_labels):
        if n > 0:
            labels += [int(label)] + [IGNORE_INDEX] * (n - 1)
    return labels + [IGNORE_INDEX]


def token_classifier_forward(hidden, weight, bias, labels):
    """hidden (B, T, H) -> logits (B, T, K) = hidden W^T + b; loss = mean CE over labels != -100."""
    logits = hidden @ weight.T + bias                                   # (B, T, K)
    flat = logits.reshape(-1, logits.shape[-1])                         # (B*T, K)
    y = np.asarray(labels).reshape(-1)
    valid = y != IGNORE_INDEX
    shifted = flat - flat.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = max(int(valid.sum()), 1)
    picked = log_probs[np.arange(len(y)), np.where(valid, y, 0)]
    loss = -(picked * valid).sum() / n
    return float(loss), logits, (hidden, weight, log_probs, y, valid, n)


def token_classifier_backward(cache):
    """-> (dhidden (B, T, H), dweight (K, H), dbias (K,)): dlogits = (softmax - onehot) / n on labelled rows."""
    hidden, weight, log_probs, y, valid, n = cache
    dlogits = np.exp(log_probs)
    dlogits[np.arange(len(y)), np.where(valid, y, 0)] -= 1.0
    dlogits = dlogits * (valid[:, None] / n)                            # (B*T, K); 0 on ignored rows
    h2 = hidden.reshape(-1, hidden.shape[-1])
    return (dlogits @ weight).reshape(hidden.shape), dlogits.T @ h2, dlogits.sum(axis=0)


# =======================================================================================
# Chapter 15 — question answering
# =======================================================================================
def _ce(logits, targets):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(targets)), targets].mean(), log_probs


def span_loss_forward(start_logits, end_logits, start_positions, end_positions):
    """(B, T) logits, (B,) positions -> (loss, cache): loss = (CE(start) + CE(end)) / 2, each a batch mean."""
    loss_s, lp_s = _ce(start_logits, start_positions)
    loss_e, lp_e = _ce(end_logits, end_positions)
    return float((loss_s + loss_e) / 2), (lp_s, lp_e, np.asarray(start_positions), np.asarray(end_positions))


def span_loss_backward(cache):
    """-> (dstart_logits, dend_logits): (softmax - onehot) / (2 B) each."""
    lp_s, lp_e, s, e = cache
    B = len(s)
    out = []
    for lp, pos in ((lp_s, s), (lp_e, e)):
        d = np.exp(lp)
        d[np.arange(B), pos] -= 1.0
        out.append(d / (2 * B))
    return tuple(out)


def best_span(start_logits, end_logits, context_mask, max_answer_len):
    """(T,) logits, (T,) 0/1 context mask -> (start, end, score) maximising p_start(s) p_end(e) over context
    positions with s <= e < s + max_answer_len; p = softmax over the context positions only."""
    def probs(z):
        z = np.where(np.asarray(context_mask) > 0, z, MASK_VALUE)
        p = np.exp(z - z.max())
        return p / p.sum()

    ps, pe = probs(np.asarray(start_logits, dtype=np.float64)), probs(np.asarray(end_logits, dtype=np.float64))
    scores = np.tril(np.triu(np.outer(ps, pe)), max_answer_len - 1)
    allowed = np.asarray(context_mask) > 0
    scores = scores * allowed[:, None] * allowed[None, :]
    s, e = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return int(s), int(e), float(scores[s, e])
