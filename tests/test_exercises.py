"""The exercise graders are honest: the reference solutions pass, the untouched stubs fail, and a
planted wrong answer for every part fails with a message that points at the mistake.

Each test carries the marker of its chapter (``pytest -m ch03``).
"""
from __future__ import annotations

import math
import random
import re
import types
import unicodedata

import numpy as np
import pytest
from conftest import requires_torch
from scipy.special import entr, erf, log_softmax, logsumexp

from bert_from_scratch.constants import IGNORE_INDEX
from bert_from_scratch.data.text import is_punctuation
from bert_from_scratch.exercises import grader, solutions
from bert_from_scratch.cli.check import add_check_arguments, cli_check
from bert_from_scratch.exercises.grader import ExerciseError, chapters, exercise_file, grade
from test_exercises_tasks import PLANTED_TASKS
from test_exercises_parallel import PLANTED_PARALLEL

S = solutions
CHAPTER_NUMBERS = sorted(chapters())


def chapter_param(n, *values):
    return pytest.param(n, *values, marks=getattr(pytest.mark, f"ch{n:02d}"), id=f"ch{n:02d}")


def with_functions(**replacements):
    """A module: the reference solutions with some functions replaced by wrong ones."""
    module = types.ModuleType("planted")
    module.__dict__.update({k: v for k, v in vars(solutions).items() if not k.startswith("__")})
    module.__dict__.update(replacements)
    module.__file__ = "planted.py"
    return module


# =======================================================================================
# planted wrong answers, one or more per part: (chapter, part, replacements, expected text)
# =======================================================================================
def _no_accent_strip(text):
    words = []
    for chunk in text.lower().split():
        cur = ""
        for ch in chunk:
            if not ch.isalnum():
                words += [cur] if cur else []
                words.append(ch)
                cur = ""
            else:
                cur += ch
        words += [cur] if cur else []
    return words


def _shortest_first(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        for end in range(start + 1, len(word) + 1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
        else:
            return ["[UNK]"]
        pieces.append(piece)
        start = end
    return pieces


def _partial_unk(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start and (word[start:end] if start == 0 else "##" + word[start:end]) not in vocab:
            end -= 1
        if end == start:
            pieces.append("[UNK]")
            break
        pieces.append(word[start:end] if start == 0 else "##" + word[start:end])
        start = end
    return pieces


def _embeddings_no_pos(ids, types_, W, P, K):
    return W[ids] + K[types_]


def _embeddings_backward_buffered(dx, ids, types_, ws, ps, ts):
    dword, dpos, dtype_ = np.zeros(ws), np.zeros(ps), np.zeros(ts)
    dword[ids] += dx                                  # repeated ids: only one write survives
    dtype_[types_] += dx
    dpos[: dx.shape[1]] = dx.sum(0)
    return dword, dpos, dtype_


def _attention_unscaled(q, k, v, mask=None):
    return S.attention_forward(q * math.sqrt(q.shape[-1]), k, v, mask)


def _attention_backward_no_rowsum(dout, cache):
    q, k, v, probs = cache
    d = q.shape[-1]
    dprobs = dout @ v.swapaxes(-1, -2)
    dscores = probs * dprobs                          # the - rowsum(dP * P) term is missing
    return (dscores @ k / math.sqrt(d), dscores.swapaxes(-1, -2) @ q / math.sqrt(d),
            probs.swapaxes(-1, -2) @ dout)


def _layernorm_unbiased(x, gamma, beta, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    rstd = 1.0 / x.std(-1, ddof=1, keepdims=True)
    xhat = (x - mean) * rstd
    return xhat * gamma + beta, (xhat, rstd, gamma)


def _layernorm_backward_one_term(dy, cache):
    xhat, rstd, gamma = cache
    C = xhat.shape[-1]
    dxhat = dy * gamma
    return (rstd * (dxhat - dxhat.mean(-1, keepdims=True)), (dy * xhat).reshape(-1, C).sum(0),
            dy.reshape(-1, C).sum(0))


def _gelu_tanh(x):
    y = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return y, (x, 0.5 * (1 + erf(x / math.sqrt(2))))


def _gelu_backward_cdf_only(dy, cache):
    return dy * cache[1]


def _ffn_no_residual(x, w1, b1, w2, b2, gamma, beta, eps=1e-12):
    g, _ = S.gelu_forward(x @ w1.T + b1)
    return S.layernorm_forward(g @ w2.T + b2, gamma, beta, eps)


def _ffn_backward_no_residual(dy, cache):
    grads = S.ffn_block_backward(dy, cache)
    dsum, _, _ = S.layernorm_backward(dy, cache[-1])
    grads["dx"] = grads["dx"] - dsum                  # only the path through the block
    return grads


def _gather_column_major(seq, labels):
    t, b = np.nonzero((labels != IGNORE_INDEX).T)
    return seq[b, t], labels[b, t]


def _ce_mean_all_rows(logits, labels):
    loss, cache = S.cross_entropy_forward(logits, labels)
    return loss * cache[3] / len(labels), cache


def _ce_backward_all_rows(cache):
    log_probs, safe, valid, n_valid = cache
    return S.cross_entropy_backward(cache) * n_valid / len(safe)


def _mask_always_mask(tokens, rng, vocab_words, p=0.15, n_max=20):
    out, pos, labels = S.mask_tokens(tokens, rng, vocab_words, p, n_max)
    return [("[MASK]" if i in set(pos) else t) for i, t in enumerate(out)], pos, labels


def _mask_includes_specials(tokens, rng, vocab_words, p=0.15, n_max=20):
    candidates = list(range(len(tokens)))             # [CLS] and [SEP] are candidates too
    rng.shuffle(candidates)
    n = min(n_max, max(1, int(round(len(tokens) * p))))
    chosen = sorted(candidates[:n])
    out = list(tokens)
    for i in chosen:
        out[i] = "[MASK]"
    return out, chosen, [tokens[i] for i in chosen]


def _mask_global_random(tokens, rng, vocab_words, p=0.15, n_max=20):
    return S.mask_tokens(tokens, random.Random(random.random()), vocab_words, p, n_max)


def _mask_first_n(tokens, rng, vocab_words, p=0.15, n_max=20):
    class NoShuffle(random.Random):
        def shuffle(self, x):
            pass
    inner = NoShuffle(rng.random())
    return S.mask_tokens(tokens, inner, vocab_words, p, n_max)


def _adamw_l2(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01):
    S.adamw_step(param, grad + weight_decay * param, m, v, step, lr, beta1, beta2, eps, 0.0)


def _adamw_no_bias_correction(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01):
    param *= 1.0 - lr * weight_decay
    m *= beta1
    m += (1 - beta1) * grad
    v *= beta2
    v += (1 - beta2) * grad * grad
    param -= lr * m / (np.sqrt(v) + eps)


def _adamw_rebinds(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01):
    param = param - lr * grad                         # rebinds a local name: the caller sees nothing  # noqa: F841


def _lr_one_based(step, total, warmup, peak):
    return S.warmup_linear_lr(step + 1, total, warmup, peak)


def _clip_per_tensor(grads, max_norm):
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    for g in grads.values():
        g *= min(1.0, max_norm / (np.linalg.norm(g) + 1e-6))
    return norm


def _online_no_correction(m, l, o, scores, v_tile):
    m_new = np.maximum(m, scores.max(axis=1))
    p = np.exp(scores - m_new[:, None])
    return m_new, l + p.sum(axis=1), o + p @ v_tile


def _tiled_unscaled(q, k, v, block_k=16):
    return S.tiled_attention(q * math.sqrt(q.shape[1]), k, v, block_k)


def _entropy_log2(att):
    return S.attention_entropy(att) / math.log(2)


def _rollout_reversed(att, residual_weight=0.5):
    L, _, T, _ = att.shape
    mixed = (1 - residual_weight) * att.mean(1) + residual_weight * np.eye(T)
    mixed /= mixed.sum(-1, keepdims=True)
    out = np.empty_like(mixed)
    out[0] = mixed[0]
    for i in range(1, L):
        out[i] = out[i - 1] @ mixed[i]
    return out


def _classifier_no_bias(pooled, weight, bias, labels):
    return S.classifier_forward(pooled, weight, np.zeros_like(bias), labels)


def _classifier_backward_no_mean(cache):
    dpooled, dweight, dbias = S.classifier_backward(cache)
    return dpooled, dweight * len(cache[3]), dbias


def _macro_f1_accuracy(predictions, labels, num_labels):
    return float((np.asarray(predictions) == np.asarray(labels)).mean())


# ---------------------------------------------------------------------------------------
# the classes of mistakes a fixed float64 input hides (numerical stability, dtype, in-place
# writes, promised edge cases, statistics, tokenization, hints that name the right fix)
# ---------------------------------------------------------------------------------------
def _softmax_unshifted(s):
    e = np.exp(s)                                     # overflows for scores ~1000
    return e / e.sum(axis=-1, keepdims=True)


def _attention_unshifted(q, k, v, mask=None):
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + ((1.0 - mask[:, None, None, :]) * -10000.0).astype(q.dtype)
    probs = _softmax_unshifted(scores)
    return probs @ v, (q, k, v, probs)


def _attention_float64_mask(q, k, v, mask=None):
    d = q.shape[-1]                                   # the integer mask promotes float32 scores to float64
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(d)
    if mask is not None:
        scores = scores + (1.0 - mask[:, None, None, :]) * -10000.0
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return probs @ v, (q, k, v, probs)


def _embeddings_backward_float64(dx, ids, types_, ws, ps, ts):
    dword, dpos, dtype_ = np.zeros(ws), np.zeros(ps), np.zeros(ts)      # no dtype=: always float64
    np.add.at(dword, ids.reshape(-1), dx.reshape(-1, dx.shape[-1]))
    np.add.at(dtype_, types_.reshape(-1), dx.reshape(-1, dx.shape[-1]))
    dpos[: dx.shape[1]] = dx.sum(0)
    return dword, dpos, dtype_


def _layernorm_float64(x, gamma, beta, eps=1e-12):
    return S.layernorm_forward(x.astype(np.float64), gamma, beta, eps)


def _gelu_backward_float64(dy, cache):
    x, cdf = cache
    return dy * (cdf + x * np.exp(-0.5 * x * x) / np.float64(math.sqrt(2 * math.pi)))


def _layernorm_backward_in_place(dy, cache):
    xhat, rstd, gamma = cache
    C = xhat.shape[-1]
    dgamma, dbeta = (dy * xhat).reshape(-1, C).sum(0), dy.reshape(-1, C).sum(0)
    dy *= gamma                                       # writes into the caller's dy
    dy -= dy.mean(-1, keepdims=True) + xhat * (dy * xhat).mean(-1, keepdims=True)
    dy *= rstd
    return dy, dgamma, dbeta


def _ce_forward_unshifted(logits, labels):
    valid = labels != IGNORE_INDEX
    probs = _softmax_unshifted(logits)
    safe = np.where(valid, labels, 0)
    picked = np.log(probs[np.arange(len(labels)), safe])
    return float(-(picked * valid).sum() / max(int(valid.sum()), 1)), (probs, safe, valid)


def _ce_forward_caches_logits(logits, labels):
    loss, _ = S.cross_entropy_forward(logits, labels)  # a stable loss ...
    return loss, (logits, labels)


def _ce_backward_unshifted(cache):
    logits, labels = cache                            # ... but the backward's softmax is not shifted
    valid = labels != IGNORE_INDEX
    probs = _softmax_unshifted(logits)
    probs[np.arange(len(labels)), np.where(valid, labels, 0)] -= 1.0
    return probs * valid[:, None] / max(int(valid.sum()), 1)


def _ce_nan_when_all_ignored(logits, labels):
    loss, cache = S.cross_entropy_forward(logits, labels)
    valid = labels != IGNORE_INDEX
    return float(np.float64(loss * cache[3]) / valid.sum()), cache       # 0 / 0 = nan


def _ce_zero_division_when_all_ignored(logits, labels):
    loss, cache = S.cross_entropy_forward(logits, labels)
    return loss * cache[3] / int((labels != IGNORE_INDEX).sum()), cache


def _ce_backward_in_place(cache):
    log_probs, safe, valid, n_valid = cache
    np.exp(log_probs, out=log_probs)                  # overwrites the cache: a second call is wrong
    log_probs[np.arange(len(safe)), safe] -= 1.0
    return log_probs * valid[:, None] / n_valid


def _mask_one_draw_per_sequence(tokens, rng, vocab_words, p=0.15, n_max=20):
    candidates = [i for i, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]")]
    rng.shuffle(candidates)
    chosen = sorted(candidates[:min(n_max, max(1, int(round(len(tokens) * p))))])
    r, out = rng.random(), list(tokens)               # ONE draw for the whole sequence
    for i in chosen:
        out[i] = "[MASK]" if r < 0.8 else tokens[i] if r < 0.9 else vocab_words[rng.randrange(len(vocab_words))]
    return out, chosen, [tokens[i] for i in chosen]


def _mask_np_random_for_the_recipe(tokens, rng, vocab_words, p=0.15, n_max=20):
    candidates = [i for i, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]")]
    rng.shuffle(candidates)                           # positions from rng, the 80/10/10 from np.random
    chosen = sorted(candidates[:min(n_max, max(1, int(round(len(tokens) * p))))])
    out = list(tokens)
    for i in chosen:
        r = np.random.random()
        out[i] = "[MASK]" if r < 0.8 else tokens[i] if r < 0.9 else vocab_words[np.random.randint(len(vocab_words))]
    return out, chosen, [tokens[i] for i in chosen]


def _mask_own_seed(tokens, rng, vocab_words, p=0.15, n_max=20):
    return S.mask_tokens(tokens, random.Random(1234), vocab_words, p, n_max)


def _regex_tokenize(text):
    text = unicodedata.normalize("NFD", text.lower())
    return re.findall(r"\w+|[^\w\s]", "".join(c for c in text if unicodedata.category(c) != "Mn"))


def _tokenize_no_cjk(text):                           # the reference solution before CJK splitting
    words = []
    for chunk in unicodedata.normalize("NFD", text.lower()).split():
        cur = ""
        for ch in chunk:
            if unicodedata.category(ch) == "Mn":
                continue
            if is_punctuation(ch):
                words += [cur, ch] if cur else [ch]
                cur = ""
            else:
                cur += ch
        words += [cur] if cur else []
    return words


def _tokenize_splits_symbols(text):
    return S.basic_tokenize(re.sub(r"([£€])", r" \1 ", text))


def _wordpiece_no_prefix(word, vocab):
    return _wordpiece_with(word, vocab, lookup="", emit="")


def _wordpiece_prefix_not_returned(word, vocab):
    return _wordpiece_with(word, vocab, lookup="##", emit="")


def _wordpiece_with(word, vocab, lookup, emit):
    if len(word) > 100:
        return ["[UNK]"]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start and (word[start:end] if start == 0 else lookup + word[start:end]) not in vocab:
            end -= 1
        if end == start:
            return ["[UNK]"]
        pieces.append(word[start:end] if start == 0 else emit + word[start:end])
        start = end
    return pieces


def _adamw_mutates_grad(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01):
    grad *= 1.0 - beta1                               # writes into the caller's gradient
    param *= 1.0 - lr * weight_decay
    m *= beta1
    m += grad
    v *= beta2
    v += (1.0 - beta2) * (grad / (1.0 - beta1)) ** 2
    param -= lr / (1 - beta1 ** step) * m / (np.sqrt(v) / math.sqrt(1 - beta2 ** step) + eps)


def _adamw_eps_hat(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01):
    param *= 1.0 - lr * weight_decay
    m *= beta1
    m += (1 - beta1) * grad
    v *= beta2
    v += (1 - beta2) * grad * grad
    param -= lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step) * m / (np.sqrt(v) + eps)


def _online_unshifted_correction(m, l, o, scores, v_tile):
    m_new = np.maximum(m, scores.max(axis=1))
    c = np.exp(m) / np.exp(m_new)                     # inf / inf for m ~1000
    p = np.exp(scores) / np.exp(m_new)[:, None]
    return m_new, c * l + p.sum(1), c[:, None] * o + p @ v_tile


def _online_in_place(m, l, o, scores, v_tile):
    m_new = np.maximum(m, scores.max(axis=1))
    c = np.exp(m - m_new)
    p = np.exp(scores - m_new[:, None])
    l *= c                                            # the docstring says: do not modify the inputs
    l += p.sum(1)
    o *= c[:, None]
    o += p @ v_tile
    return m_new, l, o


def _tiled_unshifted(q, k, v, block_k=16):
    l, o = np.zeros(len(q), q.dtype), np.zeros_like(q)
    for j in range(0, len(k), block_k):
        p = np.exp(q @ k[j:j + block_k].T / math.sqrt(q.shape[1]))
        l, o = l + p.sum(1), o + p @ v[j:j + block_k]
    return o / l[:, None]


def _tiled_float64_state(q, k, v, block_k=16):
    T, d = q.shape                                    # np.full / np.zeros without dtype=: float64
    m, l, o = np.full(T, -np.inf), np.zeros(T), np.zeros((T, d))
    for j in range(0, len(k), block_k):
        m, l, o = S.online_softmax_update(m, l, o, q @ k[j:j + block_k].T / math.sqrt(d), v[j:j + block_k])
    return o / l[:, None]


def _rollout_float64_eye(att, residual_weight=0.5):
    mixed = (1 - residual_weight) * att.mean(1) + residual_weight * np.eye(att.shape[-1])
    mixed /= mixed.sum(-1, keepdims=True)
    out = np.empty_like(mixed)
    out[0] = mixed[0]
    for i in range(1, len(mixed)):
        out[i] = mixed[i] @ out[i - 1]
    return out


def _classifier_unshifted(pooled, weight, bias, labels):
    logits = pooled @ weight.T + bias
    probs = _softmax_unshifted(logits)
    return float(-np.log(probs[np.arange(len(labels)), labels]).mean()), logits, (pooled, weight, probs, labels)


def _classifier_caches_logits(pooled, weight, bias, labels):
    loss, logits, _ = S.classifier_forward(pooled, weight, bias, labels)     # a stable loss ...
    return loss, logits, (pooled, weight, logits, labels)


def _classifier_backward_unshifted(cache):
    pooled, weight, logits, labels = cache            # ... but the backward's softmax is not shifted
    d = _softmax_unshifted(logits)
    d[np.arange(len(labels)), labels] -= 1.0
    d /= len(labels)
    return d @ weight, d.T @ pooled, d.sum(0)


def _classifier_backward_float64(cache):
    return tuple(g.astype(np.float64) for g in S.classifier_backward(cache))


def _classifier_backward_in_place(cache):
    pooled, weight, log_probs, labels = cache
    np.exp(log_probs, out=log_probs)                  # the cache is overwritten
    log_probs[np.arange(len(labels)), labels] -= 1.0
    log_probs /= len(labels)
    return log_probs @ weight, log_probs.T @ pooled, log_probs.sum(0)


def _macro_f1_nan_for_absent(predictions, labels, num_labels):
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    f1 = [2 * np.sum((predictions == c) & (labels == c)) / (np.sum(predictions == c) + np.sum(labels == c))
          for c in range(num_labels)]                 # 0 / 0 = nan for a class never seen
    return float(np.mean(f1))


STABILITY = "subtract the row maximum"
FLOAT32 = "for float32 inputs; expected float32"
IN_PLACE = "do not modify your inputs in place; copy first"
PLANTED_CLASSES = [
    (3, "attention_forward", {"attention_forward": _attention_unshifted}, STABILITY),
    (3, "attention_forward", {"attention_forward": _attention_float64_mask}, FLOAT32),
    (2, "embeddings_backward", {"embeddings_backward": _embeddings_backward_float64}, FLOAT32),
    (5, "layernorm_forward", {"layernorm_forward": _layernorm_float64}, FLOAT32),
    (5, "gelu_backward", {"gelu_backward": _gelu_backward_float64}, FLOAT32),
    (5, "layernorm_backward", {"layernorm_backward": _layernorm_backward_in_place}, IN_PLACE),
    (7, "cross_entropy_forward", {"cross_entropy_forward": _ce_forward_unshifted}, STABILITY),
    (7, "cross_entropy_backward", {"cross_entropy_forward": _ce_forward_caches_logits,
                                   "cross_entropy_backward": _ce_backward_unshifted}, STABILITY),
    (7, "cross_entropy_forward", {"cross_entropy_forward": _ce_nan_when_all_ignored},
     "if no row counts, the loss is 0"),
    (7, "cross_entropy_forward", {"cross_entropy_forward": _ce_zero_division_when_all_ignored}, "ZeroDivisionError"),
    (7, "cross_entropy_backward", {"cross_entropy_backward": _ce_backward_in_place}, IN_PLACE),
    (8, "mask_tokens", {"mask_tokens": _mask_one_draw_per_sequence}, "for EACH position"),
    (8, "mask_tokens", {"mask_tokens": _mask_np_random_for_the_recipe}, "not from `random` or `np.random`"),
    (8, "mask_tokens", {"mask_tokens": _mask_own_seed}, "differently seeded rngs gave identical results"),
    (1, "basic_tokenize", {"basic_tokenize": _regex_tokenize}, "`_` is punctuation"),
    (1, "basic_tokenize", {"basic_tokenize": _tokenize_no_cjk}, "every CJK ideograph"),
    (1, "basic_tokenize", {"basic_tokenize": _tokenize_splits_symbols}, "'£' is a symbol (category Sc)"),
    (1, "wordpiece", {"wordpiece": _wordpiece_no_prefix}, "'##' continuation prefix is missing"),
    (1, "wordpiece", {"wordpiece": _wordpiece_prefix_not_returned}, "'##' continuation prefix is missing"),
    (9, "adamw_step", {"adamw_step": _adamw_no_bias_correction}, "original BERT optimizer"),
    (9, "adamw_step", {"adamw_step": _adamw_mutates_grad}, IN_PLACE),
    (9, "adamw_step", {"adamw_step": _adamw_eps_hat}, "'efficient' form"),
    (9, "warmup_linear_lr", {"warmup_linear_lr": _lr_one_based}, "counted from 1"),
    (10, "online_softmax_update", {"online_softmax_update": _online_unshifted_correction}, STABILITY),
    (10, "online_softmax_update", {"online_softmax_update": _online_in_place}, IN_PLACE),
    (10, "tiled_attention", {"tiled_attention": _tiled_unshifted}, STABILITY),
    (10, "tiled_attention", {"tiled_attention": _tiled_float64_state}, FLOAT32),
    (11, "attention_rollout", {"attention_rollout": _rollout_float64_eye}, FLOAT32),
    (12, "classifier_forward", {"classifier_forward": _classifier_unshifted}, STABILITY),
    (12, "classifier_backward", {"classifier_forward": _classifier_caches_logits,
                                 "classifier_backward": _classifier_backward_unshifted}, STABILITY),
    (12, "classifier_backward", {"classifier_backward": _classifier_backward_float64}, FLOAT32),
    (12, "classifier_backward", {"classifier_backward": _classifier_backward_in_place}, IN_PLACE),
    (12, "macro_f1", {"macro_f1": _macro_f1_nan_for_absent}, "neither predicted nor present"),
]


PLANTED = [
    (1, "basic_tokenize", {"basic_tokenize": _no_accent_strip}, "strip accents"),
    (1, "wordpiece", {"wordpiece": _shortest_first}, "LONGEST"),
    (1, "wordpiece", {"wordpiece": _partial_unk}, "WHOLE word"),
    (2, "embeddings_forward", {"embeddings_forward": _embeddings_no_pos}, "position embeddings are missing"),
    (2, "embeddings_backward", {"embeddings_backward": _embeddings_backward_buffered}, "np.add.at"),
    (3, "attention_forward", {"attention_forward": _attention_unscaled}, "not divided by sqrt(d)"),
    (3, "attention_backward", {"attention_backward": _attention_backward_no_rowsum}, "rowsum(dP * P)"),
    (4, "split_heads", {"split_heads": lambda x, nh: x.reshape(x.shape[0], nh, x.shape[1], -1)},
     "plain reshape"),
    (4, "merge_heads", {"merge_heads": lambda x: x.reshape(x.shape[0], x.shape[2], -1)}, "transpose"),
    (4, "attention_mask_bias",
     {"attention_mask_bias": lambda mask, dtype=np.float32: (mask.astype(dtype) * dtype(-10000.0))[:, None, None, :]},
     "-10000 goes where the mask is 0"),
    (5, "layernorm_forward", {"layernorm_forward": _layernorm_unbiased}, "unbiased"),
    (5, "layernorm_backward", {"layernorm_backward": _layernorm_backward_one_term}, "both mean terms"),
    (5, "gelu_forward", {"gelu_forward": _gelu_tanh}, "tanh approximation"),
    (5, "gelu_backward", {"gelu_backward": _gelu_backward_cdf_only}, "Phi(x) + x phi(x)"),
    (6, "ffn_block_forward", {"ffn_block_forward": _ffn_no_residual}, "residual is missing"),
    (6, "ffn_block_backward", {"ffn_block_backward": _ffn_backward_no_residual}, "dx = dsum +"),
    (7, "gather_masked", {"gather_masked": _gather_column_major}, "gather_masked rows is wrong"),
    (7, "cross_entropy_forward", {"cross_entropy_forward": _ce_mean_all_rows}, "over ALL rows"),
    (7, "cross_entropy_backward", {"cross_entropy_backward": _ce_backward_all_rows}, "counted rows"),
    (8, "mask_tokens", {"mask_tokens": _mask_always_mask}, "80% [MASK]"),
    (8, "mask_tokens", {"mask_tokens": _mask_includes_specials}, "are never masked"),
    (8, "mask_tokens", {"mask_tokens": _mask_global_random}, "draw all randomness"),
    (8, "mask_tokens", {"mask_tokens": _mask_first_n}, "uniformly at random"),
    (9, "adamw_step", {"adamw_step": _adamw_l2}, "L2 regularisation"),
    (9, "adamw_step", {"adamw_step": _adamw_no_bias_correction}, "no bias correction"),
    (9, "adamw_step", {"adamw_step": _adamw_rebinds}, "IN PLACE"),
    (9, "warmup_linear_lr", {"warmup_linear_lr": _lr_one_based}, "step counts from 0"),
    (9, "clip_by_global_norm", {"clip_by_global_norm": _clip_per_tensor}, "clipped by its own norm"),
    (10, "online_softmax_update", {"online_softmax_update": _online_no_correction}, "correction is missing"),
    (10, "tiled_attention", {"tiled_attention": _tiled_unscaled}, "not divided by sqrt(d)"),
    (11, "attention_entropy", {"attention_entropy": _entropy_log2}, "log base 2"),
    (11, "attention_rollout", {"attention_rollout": _rollout_reversed}, "wrong order"),
    (12, "classifier_forward", {"classifier_forward": _classifier_no_bias}, "the bias is missing"),
    (12, "classifier_backward", {"classifier_backward": _classifier_backward_no_mean}, "dlogits = (softmax - onehot) / B"),
    (12, "macro_f1", {"macro_f1": _macro_f1_accuracy}, "accuracy (micro-F1)"),
]
PLANTED += PLANTED_CLASSES
PLANTED += PLANTED_TASKS                      # chapters 14 and 15: tests/test_exercises_tasks.py
PLANTED += PLANTED_PARALLEL                   # chapter 13: tests/test_exercises_parallel.py


# =======================================================================================
# the three honesty properties
# =======================================================================================
@pytest.mark.parametrize("chapter", [chapter_param(n) for n in CHAPTER_NUMBERS])
def test_reference_solutions_pass(chapter, capsys):
    report = grade(chapter, module=solutions)
    assert report.ok, str(report)
    assert report.exit_code == 0
    printed = capsys.readouterr().out
    assert printed.count("PASS") == len(chapters()[chapter].parts) and "FAIL" not in printed


@pytest.mark.parametrize("chapter", [chapter_param(n) for n in CHAPTER_NUMBERS])
def test_untouched_stubs_fail_every_part(chapter):
    path = exercise_file(chapter)
    assert path.is_file(), path
    report = grade(chapter, file=path, verbose=False)
    assert not report.ok and report.exit_code == 1
    assert [r.part for r in report.results] == [p.name for p in chapters()[chapter].parts]
    for r in report.results:
        assert r.status == "TODO" and "not implemented" in r.message, r


def test_every_part_has_a_planted_wrong_answer():
    covered = {(c, p) for c, p, _, _ in PLANTED}
    every = {(n, part.name) for n, ch in chapters().items() for part in ch.parts}
    assert every - covered == set()


@pytest.mark.parametrize("chapter, part, replacements, expected",
                         [chapter_param(c, p, r, e) for c, p, r, e in PLANTED])
def test_planted_wrong_answer_fails_with_a_helpful_message(chapter, part, replacements, expected):
    report = grade(chapter, module=with_functions(**replacements), verbose=False)
    result = report.result(part)
    assert not result.ok and result.status == "FAIL", result
    assert expected in result.message, result.message
    assert report.exit_code == 1
    # parts that do not use the planted function still pass: the message points at the right part
    untouched = [p.name for p in chapters()[chapter].parts if not set(p.functions) & set(replacements)]
    for name in untouched:
        assert report.result(name).ok, report.result(name)


# =======================================================================================
# what a learner meets: crashes, missing functions, files, the command line
# =======================================================================================
@pytest.mark.ch03
def test_crash_in_learner_code_names_the_line(tmp_path):
    path = tmp_path / "ch03_attention.py"
    path.write_text("import numpy as np\n\ndef attention_forward(q, k, v, mask=None):\n"
                    "    return np.matmul(q, k), None\n\ndef attention_backward(dout, cache):\n"
                    "    raise NotImplementedError\n")
    report = grade(3, file=path, verbose=False)
    first = report.result("attention_forward")
    assert not first.ok and "raised ValueError" in first.message and "line 4" in first.message, first.message
    assert report.result("attention_backward").status == "FAIL"


@pytest.mark.ch03
def test_missing_function_and_wrong_return(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("def attention_forward(q, k, v, mask=None):\n    return q\n")
    report = grade(3, file=path, verbose=False)
    assert "must return a pair" in report.result("attention_forward").message
    assert "no function `attention_backward`" in report.result("attention_backward").message


def test_file_that_does_not_import_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def f(:\n")
    with pytest.raises(ExerciseError, match="importing .*broken.py failed: SyntaxError"):
        grade(1, file=path, verbose=False)
    with pytest.raises(ExerciseError, match="does not exist"):
        grade(1, file=tmp_path / "nope.py", verbose=False)
    with pytest.raises(ExerciseError, match="no chapter 99"):
        grade(99, module=solutions, verbose=False)
    with pytest.raises(ExerciseError, match="chapter must be a number"):
        grade("three", module=solutions, verbose=False)


def test_env_var_points_at_another_exercises_folder(tmp_path, monkeypatch):
    (tmp_path / "ch12_finetuning.py").write_text(
        "from bert_from_scratch.exercises.solutions import classifier_forward, classifier_backward, macro_f1\n")
    monkeypatch.setenv(grader.ENV_FOLDER, str(tmp_path))
    assert exercise_file(12) == tmp_path / "ch12_finetuning.py"
    assert grade(12, verbose=False).ok
    monkeypatch.setenv(grader.ENV_FOLDER, str(tmp_path / "missing"))
    with pytest.raises(ExerciseError, match="not a folder"):
        exercise_file(12)


def _cli(argv):
    import argparse

    return cli_check(add_check_arguments(argparse.ArgumentParser()).parse_args(argv))


def test_cli_exit_codes(tmp_path, capsys):
    assert _cli(["5", "--solutions"]) == 0
    assert "4/4 parts pass" in capsys.readouterr().out
    assert _cli(["5"]) == 1                                 # the untouched stub
    out = capsys.readouterr().out
    assert "FAIL  layernorm_backward" in out and "0/4 parts pass" in out
    mine = tmp_path / "mine.py"
    mine.write_text("from bert_from_scratch.exercises.solutions import *\n")
    assert _cli(["5", "--file", str(mine)]) == 0
    capsys.readouterr()
    assert _cli(["all", "--solutions", "--quiet"]) == 0
    assert capsys.readouterr().out.count("parts pass") == len(CHAPTER_NUMBERS)
    assert _cli(["99"]) == 2
    assert "no chapter 99" in capsys.readouterr().err


def test_module_entry_point_runs(monkeypatch, capsys):
    from bert_from_scratch.exercises.__main__ import main

    assert main(["check", "10", "--solutions"]) == 0
    assert "2/2 parts pass" in capsys.readouterr().out


@pytest.mark.ch08
def test_masking_grader_is_not_fooled_by_the_package_recipe():
    """The package's own create_masked_lm_predictions (a second implementation) passes the chapter-8 grader."""
    from bert_from_scratch.data.pretraining import create_masked_lm_predictions

    def mask_tokens(tokens, rng, vocab_words, masked_lm_prob=0.15, max_predictions=20):
        return create_masked_lm_predictions(tokens, masked_lm_prob, max_predictions, vocab_words, rng)

    report = grade(8, module=with_functions(mask_tokens=mask_tokens), verbose=False)
    assert report.ok, str(report)


# =======================================================================================
# correct alternatives the graders must accept: another formula for the same thing is not a mistake
# =======================================================================================
def _wordpiece_recursive(word, vocab, prefix=""):
    if len(word) > 100:
        return ["[UNK]"]
    if not word:
        return []
    for end in range(len(word), 0, -1):               # the longest prefix first, then the rest recursively
        if prefix + word[:end] in vocab:
            rest = _wordpiece_recursive(word[end:], vocab, "##")
            return ["[UNK]"] if rest == ["[UNK]"] else [prefix + word[:end]] + rest
    return ["[UNK]"]


def _embeddings_backward_loops(dx, ids, types_, ws, ps, ts):
    dword, dpos, dtype_ = (np.zeros(shape, dtype=dx.dtype) for shape in (ws, ps, ts))
    B, T, _ = dx.shape
    for b in range(B):
        for t in range(T):
            dword[ids[b, t]] += dx[b, t]
            dpos[t] += dx[b, t]
            dtype_[types_[b, t]] += dx[b, t]
    return dword, dpos, dtype_


def _attention_einsum(q, k, v, mask=None):
    scores = np.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = np.where(mask[:, None, None, :] == 0, scores - 10000.0, scores)
    probs = np.exp(scores - logsumexp(scores, axis=-1, keepdims=True))    # a shifted softmax, written differently
    return np.einsum("bhij,bhjd->bhid", probs, v), (q, k, v, probs)


def _attention_backward_einsum(dout, cache):
    q, k, v, probs = cache
    scale = 1.0 / math.sqrt(q.shape[-1])
    dv = np.einsum("bhij,bhid->bhjd", probs, dout)
    dprobs = np.einsum("bhid,bhjd->bhij", dout, v)
    dscores = probs * (dprobs - np.einsum("bhij,bhij->bhi", dprobs, probs)[..., None])
    return np.einsum("bhij,bhjd->bhid", dscores, k) * scale, np.einsum("bhij,bhid->bhjd", dscores, q) * scale, dv


def _layernorm_var(x, gamma, beta, eps=1e-12):
    rstd = 1.0 / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
    xhat = (x - x.mean(axis=-1, keepdims=True)) * rstd
    return gamma * xhat + beta, (xhat, rstd, gamma)


def _ce_forward_loops(logits, labels):
    total, n, probs = 0.0, 0, []
    for row, label in zip(logits, labels):
        m = row.max()
        lse = m + np.log(np.exp(row - m).sum())
        probs.append(np.exp(row - lse))
        if label != IGNORE_INDEX:
            total, n = total + float(lse - row[label]), n + 1
    return (total / n if n else 0.0), (np.array(probs), labels)


def _ce_backward_loops(cache):
    probs, labels = cache
    n = max(int(np.sum(labels != IGNORE_INDEX)), 1)
    d = np.zeros_like(probs)
    for i, label in enumerate(labels):
        if label != IGNORE_INDEX:
            d[i] = probs[i]
            d[i, label] -= 1.0
            d[i] /= n
    return d


def _mask_sample(tokens, rng, vocab_words, p=0.15, n_max=20):
    candidates = [i for i, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]")]
    chosen = sorted(rng.sample(candidates, min(n_max, max(1, int(round(len(tokens) * p))))))
    out = list(tokens)
    for i in chosen:
        r = rng.random()
        if r < 0.8:
            out[i] = "[MASK]"
        elif r >= 0.9:
            out[i] = rng.choice(vocab_words)
    return out, chosen, [tokens[i] for i in chosen]


def _adamw_torch_style(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01):
    """torch.optim.AdamW's single-tensor code, line by line, in NumPy."""
    param *= 1 - lr * weight_decay                    # param.mul_(1 - lr * weight_decay)
    m += (grad - m) * (1 - beta1)                     # exp_avg.lerp_(grad, 1 - beta1)
    v *= beta2                                        # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
    v += (1 - beta2) * grad * grad
    step_size = lr / (1 - beta1 ** step)
    denom = np.sqrt(v) / math.sqrt(1 - beta2 ** step) + eps
    param -= step_size * m / denom                    # param.addcdiv_(exp_avg, denom, value=-step_size)


def _adamw_textbook(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01):
    m[:] = beta1 * m + (1 - beta1) * grad
    v[:] = beta2 * v + (1 - beta2) * grad ** 2
    m_hat, v_hat = m / (1 - beta1 ** step), v / (1 - beta2 ** step)
    param[:] = param - lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * param)


def _clip_textbook(grads, max_norm):
    norm = math.sqrt(sum(float(np.sum(g ** 2)) for g in grads.values()))
    if norm > max_norm:
        for g in grads.values():
            g *= max_norm / norm                      # the textbook coefficient, no + 1e-6
    return norm


def _online_loops(m, l, o, scores, v_tile):
    m_new, l_new, o_new = m.copy(), l.copy(), o.copy()
    for i in range(len(m)):
        mi = max(m[i], scores[i].max())
        c, p = np.exp(m[i] - mi), np.exp(scores[i] - mi)
        m_new[i], l_new[i], o_new[i] = mi, c * l[i] + p.sum(), c * o[i] + p @ v_tile
    return m_new, l_new, o_new


def _entropy_entr(att):
    return entr(att).sum(axis=-1).mean(axis=-1)       # scipy's -x log x, with 0 log 0 = 0


def _classifier_einsum(pooled, weight, bias, labels):
    logits = np.einsum("bh,kh->bk", pooled, weight) + bias
    log_probs = log_softmax(logits, axis=1)
    return float(-log_probs[np.arange(len(labels)), labels].mean()), logits, (pooled, weight, log_probs, labels)


def _macro_f1_confusion(predictions, labels, num_labels):
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(predictions)), 1)
    tp = np.diag(cm)
    denom = 2 * tp + (cm.sum(0) - tp) + (cm.sum(1) - tp)
    return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))


ACCEPTED = [
    (1, {"wordpiece": _wordpiece_recursive}),
    (2, {"embeddings_backward": _embeddings_backward_loops}),
    (3, {"attention_forward": _attention_einsum, "attention_backward": _attention_backward_einsum}),
    (5, {"layernorm_forward": _layernorm_var}),
    (7, {"cross_entropy_forward": _ce_forward_loops, "cross_entropy_backward": _ce_backward_loops}),
    (8, {"mask_tokens": _mask_sample}),
    (9, {"adamw_step": _adamw_torch_style, "clip_by_global_norm": _clip_textbook}),
    (9, {"adamw_step": _adamw_textbook}),
    (10, {"online_softmax_update": _online_loops}),
    (11, {"attention_entropy": _entropy_entr}),
    (12, {"classifier_forward": _classifier_einsum, "macro_f1": _macro_f1_confusion}),
]


@pytest.mark.parametrize("chapter, replacements", [chapter_param(c, r) for c, r in ACCEPTED])
def test_correct_alternative_passes(chapter, replacements):
    report = grade(chapter, module=with_functions(**replacements), verbose=False)
    assert report.ok, str(report)


@requires_torch
@pytest.mark.ch09
def test_torch_adamw_itself_passes():
    """torch.optim.AdamW's own update (its functional form, on the learner's arrays) passes chapter 9."""
    import torch
    from torch.optim.adamw import adamw

    def adamw_step(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01):
        adamw([torch.from_numpy(param)], [torch.from_numpy(np.array(grad))], [torch.from_numpy(m)],
              [torch.from_numpy(v)], [], [torch.tensor(float(step - 1))], foreach=False, amsgrad=False,
              beta1=beta1, beta2=beta2, lr=lr, weight_decay=weight_decay, eps=eps, maximize=False)

    report = grade(9, module=with_functions(adamw_step=adamw_step), verbose=False)
    assert report.result("adamw_step").ok, report.result("adamw_step")


@pytest.mark.ch01
def test_missing_continuation_prefix_is_not_called_longest_first():
    for planted in (_wordpiece_no_prefix, _wordpiece_prefix_not_returned):
        message = grade(1, module=with_functions(wordpiece=planted), verbose=False).result("wordpiece").message
        assert "'##' continuation prefix is missing" in message and "LONGEST" not in message, message


@pytest.mark.ch01
def test_reference_basic_tokenize_agrees_with_the_package_on_cjk_and_symbols():
    from bert_from_scratch.data.tokenizer import SPECIAL_TOKENS, Tokenizer

    text = "東京タワーで中文字を snake_case £5 Crème brûlée"
    assert S.basic_tokenize(text) == Tokenizer(list(SPECIAL_TOKENS)).basic_tokenize(text)
    assert S.basic_tokenize("中文") == ["中", "文"] and S.basic_tokenize("£5_") == ["£5", "_"]
    stub = exercise_file(1).read_text(encoding="utf-8")
    assert "CJK" in stub and "£" in stub


def test_messages_print_enough_digits_to_see_the_difference():
    with pytest.raises(grader.Wrong, match=r"got 1\.00000012, expected 1\b"):
        grader.expect_close("x", np.array([1.00000012]), np.array([1.0]), rtol=1e-9, atol=0)


@pytest.mark.ch08
def test_masking_grader_leaves_the_global_random_state_alone():
    before = random.getstate()
    assert grade(8, module=solutions, verbose=False).ok
    assert random.getstate() == before
