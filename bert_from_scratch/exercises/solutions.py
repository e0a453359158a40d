r"""Reference solutions to the chapter exercises (``chapters/exercises/chNN_*.py``).

They live inside the package so the graders can be tested: ``bert-from-scratch check N --solutions``
grades these, and ``tests/test_exercises.py`` proves every grader passes them. Each is written
out on its own (not a call into the package), so a grader that compares a learner's function with
the package's reference is also checked against a second, independent implementation.

Try the exercises before reading on.

Function names are unique across chapters; the grader of chapter N uses only its own.
"""
from __future__ import annotations

import math
import random
import unicodedata

import numpy as np
from scipy.special import erf

from ..constants import IGNORE_INDEX, MASK_VALUE

UNK = "[UNK]"
CONTINUATION = "##"


# =======================================================================================
# Chapter 1 — tokenization
# =======================================================================================
CJK_BLOCKS = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))     # CJK ideographs (not kana, hangul)


def basic_tokenize(text: str) -> list[str]:
    """Space out CJK ideographs, lowercase, strip accents (NFD, drop ``Mn``), split on whitespace
    and cut out punctuation (Unicode ``P*`` and the ASCII symbols: ``_`` yes, ``£`` no)."""
    text = "".join(f" {ch} " if any(lo <= ord(ch) <= hi for lo, hi in CJK_BLOCKS) else ch for ch in text)
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
    words: list[str] = []
    for chunk in text.split():
        current = ""
        for ch in chunk:
            cp = ord(ch)
            is_punct = (33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126
                        or unicodedata.category(ch).startswith("P"))
            if is_punct:
                if current:
                    words.append(current)
                    current = ""
                words.append(ch)
            else:
                current += ch
        if current:
            words.append(current)
    return words


def wordpiece(word: str, vocab) -> list[str]:
    """Greedy longest-match-first: the longest prefix in ``vocab``, then ``##`` + the longest next piece..."""
    if len(word) > 100:
        return [UNK]
    pieces: list[str] = []
    start = 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else CONTINUATION + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:                # nothing matched: the whole word is unknown
            return [UNK]
        pieces.append(piece)
        start = end
    return pieces


# =======================================================================================
# Chapter 2 — embeddings
# =======================================================================================
def embeddings_forward(input_ids, token_type_ids, word_emb, pos_emb, type_emb):
    """x[b, t] = word_emb[ids[b, t]] + pos_emb[t] + type_emb[types[b, t]]:  (B, T) ids -> (B, T, H)."""
    T = input_ids.shape[1]
    return word_emb[input_ids] + pos_emb[:T][None, :, :] + type_emb[token_type_ids]


def embeddings_backward(dx, input_ids, token_type_ids, word_shape, pos_shape, type_shape):
    """Scatter-add dx (B, T, H) into the three tables; a repeated id gets the sum of its rows."""
    H = dx.shape[-1]
    dword = np.zeros(word_shape, dx.dtype)
    np.add.at(dword, input_ids.reshape(-1), dx.reshape(-1, H))     # dword[ids] += dx loses repeats
    dtype_ = np.zeros(type_shape, dx.dtype)
    np.add.at(dtype_, token_type_ids.reshape(-1), dx.reshape(-1, H))
    dpos = np.zeros(pos_shape, dx.dtype)
    dpos[: dx.shape[1]] = dx.sum(axis=0)                            # every sequence uses positions 0..T-1
    return dword, dpos, dtype_


# =======================================================================================
# Chapter 3 — scaled dot-product attention and its backward
# =======================================================================================
def attention_forward(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d) + bias) v; q, k, v (B, H, T, d), mask (B, T) 1 keep / 0 pad."""
    d = q.shape[-1]
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(d)                  # (B, H, T, T)
    if mask is not None:                                            # in the scores' dtype: float32 stays float32
        scores = scores + ((1.0 - mask[:, None, None, :]) * MASK_VALUE).astype(scores.dtype)
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)                      # (B, H, T, T)
    return probs @ v, (q, k, v, probs)


def attention_backward(dout, cache):
    q, k, v, probs = cache
    d = q.shape[-1]
    dv = probs.swapaxes(-1, -2) @ dout                              # O = P V
    dprobs = dout @ v.swapaxes(-1, -2)
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True))   # P = softmax(S)
    dq = dscores @ k / math.sqrt(d)                                 # S = Q K^T / sqrt(d)
    dk = dscores.swapaxes(-1, -2) @ q / math.sqrt(d)
    return dq, dk, dv


# =======================================================================================
# Chapter 4 — multi-head attention and masking
# =======================================================================================
def split_heads(x, num_heads: int):
    """(B, T, H) -> (B, nh, T, H / nh): head h holds features h*d .. (h+1)*d - 1."""
    B, T, H = x.shape
    return x.reshape(B, T, num_heads, H // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, nh, T, d) -> (B, T, nh * d), the inverse of split_heads."""
    B, nh, T, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, nh * d)


def attention_mask_bias(attention_mask, dtype=np.float32):
    """(B, T) 1 keep / 0 pad -> (B, 1, 1, T) additive bias: 0 where kept, -10000 at padding."""
    return ((1.0 - attention_mask.astype(dtype)) * dtype(MASK_VALUE))[:, None, None, :]


# =======================================================================================
# Chapter 5 — LayerNorm, GELU
# =======================================================================================
def layernorm_forward(x, gamma, beta, eps=1e-12):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * rstd
    return xhat * gamma + beta, (xhat, rstd, gamma)


def layernorm_backward(dy, cache):
    xhat, rstd, gamma = cache
    C = xhat.shape[-1]
    dgamma = (dy * xhat).reshape(-1, C).sum(axis=0)
    dbeta = dy.reshape(-1, C).sum(axis=0)
    dxhat = dy * gamma
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dgamma, dbeta


def gelu_forward(x):
    cdf = 0.5 * (1.0 + erf(x / math.sqrt(2.0)))
    return x * cdf, (x, cdf)


def gelu_backward(dy, cache):
    x, cdf = cache
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dy * (cdf + x * pdf)


# =======================================================================================
# Chapter 6 — the encoder block and the residual stream
# =======================================================================================
def ffn_block_forward(x, w1, b1, w2, b2, gamma, beta, eps=1e-12):
    """y = LayerNorm(x + gelu(x W1^T + b1) W2^T + b2); x (B, T, H), w1 (I, H), w2 (H, I)."""
    h = x @ w1.T + b1                                               # (B, T, I)
    g, c_gelu = gelu_forward(h)
    f = g @ w2.T + b2                                               # (B, T, H)
    y, c_ln = layernorm_forward(x + f, gamma, beta, eps)
    return y, (x, w1, w2, g, c_gelu, c_ln)


def ffn_block_backward(dy, cache):
    """-> dict with dx, dw1, db1, dw2, db2, dgamma, dbeta."""
    x, w1, w2, g, c_gelu, c_ln = cache
    dsum, dgamma, dbeta = layernorm_backward(dy, c_ln)              # (B, T, H)
    H, I = w2.shape
    dw2 = dsum.reshape(-1, H).T @ g.reshape(-1, I)                  # (H, I)
    db2 = dsum.reshape(-1, H).sum(axis=0)
    dg = dsum @ w2                                                  # (B, T, I)
    dh = gelu_backward(dg, c_gelu)
    dw1 = dh.reshape(-1, I).T @ x.reshape(-1, H)                    # (I, H)
    db1 = dh.reshape(-1, I).sum(axis=0)
    dx = dsum + dh @ w1                                             # residual + through the block
    return {"dx": dx, "dw1": dw1, "db1": db1, "dw2": dw2, "db2": db2, "dgamma": dgamma, "dbeta": dbeta}


# =======================================================================================
# Chapter 7 — the MLM and NSP heads and their losses
# =======================================================================================
def gather_masked(sequence_output, labels):
    """Rows of sequence_output (B, T, H) where labels (B, T) != -100, row-major: (N, H), targets (N,)."""
    b, t = np.nonzero(labels != IGNORE_INDEX)
    return sequence_output[b, t], labels[b, t]


def cross_entropy_forward(logits, labels):
    """Mean of -log softmax(logits)[label] over rows whose label is not -100; (N, K), (N,) -> scalar."""
    valid = labels != IGNORE_INDEX
    n_valid = max(int(valid.sum()), 1)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    safe = np.where(valid, labels, 0)
    picked = log_probs[np.arange(len(labels)), safe]
    loss = -(picked * valid).sum() / n_valid
    return float(loss), (log_probs, safe, valid, n_valid)


def cross_entropy_backward(cache):
    log_probs, safe, valid, n_valid = cache
    dlogits = np.exp(log_probs)
    dlogits[np.arange(len(safe)), safe] -= 1.0
    return dlogits * valid[:, None] / n_valid


# =======================================================================================
# Chapter 8 — the pretraining data recipe
# =======================================================================================
def mask_tokens(tokens, rng: random.Random, vocab_words, masked_lm_prob=0.15, max_predictions=20):
    """BERT's masking: choose n = min(max_predictions, max(1, round(len * p))) positions (never
    [CLS]/[SEP]); each becomes [MASK] (80%), a random word of ``vocab_words`` (10%) or stays (10%).
    Returns (output tokens, sorted positions, original tokens at those positions)."""
    candidates = [i for i, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]")]
    rng.shuffle(candidates)
    n = min(max_predictions, max(1, int(round(len(tokens) * masked_lm_prob))))
    chosen = sorted(candidates[:n])
    output = list(tokens)
    for i in chosen:
        r = rng.random()
        if r < 0.8:
            output[i] = "[MASK]"
        elif r < 0.9:
            output[i] = tokens[i]
        else:
            output[i] = vocab_words[rng.randrange(len(vocab_words))]
    return output, chosen, [tokens[i] for i in chosen]


# =======================================================================================
# Chapter 9 — the training loop: AdamW, warmup, clipping
# =======================================================================================
def adamw_step(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01):
    """One AdamW update in place of param, m, v (``step`` counts from 1)."""
    param *= 1.0 - lr * weight_decay                                # decoupled decay
    m *= beta1
    m += (1.0 - beta1) * grad
    v *= beta2
    v += (1.0 - beta2) * grad * grad
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    param -= (lr / bc1) * m / (np.sqrt(v) / math.sqrt(bc2) + eps)


def warmup_linear_lr(step, total_steps, warmup_steps, peak_lr):
    """0-based step: linear from 0 to peak over the warmup, then linear down to 0 at total_steps."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    return peak_lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def clip_by_global_norm(grads: dict, max_norm: float) -> float:
    """Scale every gradient in place by min(1, max_norm / (norm + 1e-6)); return the norm before."""
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            g *= coef
    return norm


# =======================================================================================
# Chapter 10 — kernels: the online softmax
# =======================================================================================
def online_softmax_update(m, l, o, scores, v_tile):
    """Fold one tile of keys into the running softmax of every query row.

    m (Tq,) running max, l (Tq,) running sum, o (Tq, d) running unnormalised output,
    scores (Tq, Tk) this tile's scores, v_tile (Tk, d). Returns the new (m, l, o)."""
    m_new = np.maximum(m, scores.max(axis=1))                       # (Tq,)
    correction = np.exp(m - m_new)                                  # rescale what was summed so far
    p = np.exp(scores - m_new[:, None])                             # (Tq, Tk)
    l_new = correction * l + p.sum(axis=1)
    o_new = correction[:, None] * o + p @ v_tile
    return m_new, l_new, o_new


def tiled_attention(q, k, v, block_k=16):
    """One head, q, k, v (T, d): softmax(q k^T / sqrt d) v, keys in tiles of ``block_k``."""
    T, d = q.shape
    m = np.full(T, -np.inf, dtype=q.dtype)                          # dtype=: float32 stays float32
    l = np.zeros(T, dtype=q.dtype)
    o = np.zeros((T, d), dtype=q.dtype)
    for j in range(0, k.shape[0], block_k):
        scores = q @ k[j:j + block_k].T / math.sqrt(d)
        m, l, o = online_softmax_update(m, l, o, scores, v[j:j + block_k])
    return o / l[:, None]


# =======================================================================================
# Chapter 11 — what a pretrained BERT attends to
# =======================================================================================
def attention_entropy(att):
    """(L, H, T, T) attention -> (L, H): mean over query rows of -sum_j A log A (nats, 0 log 0 = 0)."""
    safe = np.where(att > 0, att, 1.0)
    return (-(att * np.log(safe)).sum(axis=-1)).mean(axis=-1)


def attention_rollout(att, residual_weight=0.5):
    """(L, H, T, T) -> (L, T, T): R_0 = Â_0, R_l = Â_l R_{l-1}, Â = rownorm((1-a) mean_h A + a I)."""
    L, _, T, _ = att.shape
    mixed = (1.0 - residual_weight) * att.mean(axis=1) + residual_weight * np.eye(T, dtype=att.dtype)
    mixed = mixed / mixed.sum(axis=-1, keepdims=True)
    out = np.empty_like(mixed)
    out[0] = mixed[0]
    for i in range(1, L):
        out[i] = mixed[i] @ out[i - 1]
    return out


# =======================================================================================
# Chapter 12 — fine-tuning
# =======================================================================================
def classifier_forward(pooled, weight, bias, labels):
    """logits = pooled W^T + b (B, K); loss = mean cross-entropy. Returns (loss, logits, cache)."""
    logits = pooled @ weight.T + bias
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(labels)), labels].mean()
    return float(loss), logits, (pooled, weight, log_probs, labels)


def classifier_backward(cache):
    """-> (dpooled (B, H), dweight (K, H), dbias (K,))."""
    pooled, weight, log_probs, labels = cache
    dlogits = np.exp(log_probs)
    dlogits[np.arange(len(labels)), labels] -= 1.0
    dlogits /= len(labels)
    return dlogits @ weight, dlogits.T @ pooled, dlogits.sum(axis=0)


def macro_f1(predictions, labels, num_labels):
    """Mean over classes of F1 = 2 TP / (2 TP + FP + FN) (a class never predicted nor present: F1 = 0)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    scores = []
    for c in range(num_labels):
        tp = int(((predictions == c) & (labels == c)).sum())
        fp = int(((predictions == c) & (labels != c)).sum())
        fn = int(((predictions != c) & (labels == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


from .solutions_tasks import (align_labels, best_span, span_loss_backward, span_loss_forward,  # noqa: E402,F401
                              token_classifier_backward, token_classifier_forward)
from .solutions_parallel import loss_weights, ring_allreduce  # noqa: E402,F401
