r"""The checks behind ``bert-from-scratch check N``: one function per exercise part.

Each check takes the learner's module, calls its functions on fixed random inputs and either
returns a short success note or raises :class:`~.grader.Wrong` with what is wrong. Forward
passes are compared with the package's reference code; backward passes go through the
finite-difference gradient checker (float64); the masking recipe is checked by statistics.
"""
from __future__ import annotations

import math
import random

import numpy as np

from .. import layers
from ..attention import additive_mask, attention_forward_reference
from ..optim import adamw_update_xp, clip_grad_norm, linear_warmup_decay
from ..tokenizer import SPECIAL_TOKENS, Tokenizer
from .grader import Chapter, Part, Wrong, expect_close, expect_gradients, get_function


def _rng(seed=0):
    return np.random.default_rng(seed)


def _call_pair(module, name, *args):
    """Call a ``*_forward`` that must return ``(out, cache)``."""
    result = get_function(module, name)(*args)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise Wrong(f"`{name}` must return a pair (out, cache); got {type(result).__name__}")
    return result


# =======================================================================================
# Chapter 1 — tokenization
# =======================================================================================
BASIC_TEXTS = ["Hello, World!", "Héllo wörld -- it's 3.14!", "naïve café's (test)", "The U.S.A. costs $5.",
               "tab\tand\nnewline   spaces", "Ünïcödé—dash…ellipsis", "MIXED case Words"]
TOY_VOCAB = list(SPECIAL_TOKENS) + ["un", "##aff", "##able", "##a", "##ff", "play", "##ing", "##ed", "##s",
                                     "p", "##l", "##y", "a", "##b", "##c", "ab", "the", "##re", "there"]
TOY_WORDS = ["unaffable", "playing", "played", "plays", "play", "abc", "there", "thereing", "xyz", "playz",
             "a", "ab", "p" * 101]


def check_basic_tokenize(module):
    fn = get_function(module, "basic_tokenize")
    reference = Tokenizer(list(SPECIAL_TOKENS), do_lower_case=True)
    for text in BASIC_TEXTS:
        got, want = fn(text), reference.basic_tokenize(text)
        if not isinstance(got, list):
            raise Wrong(f"basic_tokenize must return a list of str; got {type(got).__name__}")
        if got != want:
            hint = ""
            if any(w != w.lower() for w in got):
                hint = " (lowercase the text)"
            elif any(c in "".join(got) for c in "éöïüÜ"):
                hint = " (strip accents: unicodedata.normalize('NFD', ...) then drop category 'Mn' characters)"
            elif any(len(w) > 1 and any(not c.isalnum() for c in w) for w in got):
                hint = " (every punctuation character must be a word of its own)"
            raise Wrong(f"basic_tokenize({text!r}) returned {got}; expected {want}{hint}")
    return f"{len(BASIC_TEXTS)} texts match the package tokenizer"


def _wordpiece_variant(word, vocab, longest=True, prefix="##", whole_unk=True):
    """WordPiece with one rule changed: the typical mistakes, to recognise them in a learner's output."""
    if len(word) > 100:
        return ["[UNK]"]
    pieces, start = [], 0
    while start < len(word):
        ends = range(len(word), start, -1) if longest else range(start + 1, len(word) + 1)
        end = next((e for e in ends if (word[start:e] if start == 0 else prefix + word[start:e]) in vocab), None)
        if end is None:
            return ["[UNK]"] if whole_unk else pieces + ["[UNK]"]
        pieces.append(word[start:end] if start == 0 else prefix + word[start:end])
        start = end
    return pieces


WORDPIECE_MISTAKES = {
    "take the LONGEST matching piece first, not the shortest": dict(longest=False),
    "pieces after the first are spelled with the '##' prefix": dict(prefix=""),
    "when some part of a word has no piece, the WHOLE word becomes ['[UNK]']": dict(whole_unk=False),
}


def check_wordpiece(module):
    fn = get_function(module, "wordpiece")
    reference = Tokenizer(TOY_VOCAB)
    vocab = set(TOY_VOCAB)
    for word in TOY_WORDS:
        got, want = fn(word, vocab), reference.wordpiece(word)
        if not isinstance(got, list):
            raise Wrong(f"wordpiece must return a list of str; got {type(got).__name__}")
        if got != want:
            shown = word if len(word) < 20 else word[:8] + f"...({len(word)} chars)"
            hint = ""
            for diagnosis, change in WORDPIECE_MISTAKES.items():
                if got == _wordpiece_variant(word, vocab, **change):
                    hint = f". Looks like: {diagnosis}"
                    break
            else:
                if len(word) > 100:
                    hint = " (words longer than 100 characters are ['[UNK]'])"
            raise Wrong(f"wordpiece({shown!r}) returned {got}; expected {want}{hint}")
    return f"{len(TOY_WORDS)} words match the package's WordPiece"


# =======================================================================================
# Chapter 2 — embeddings
# =======================================================================================
def _embedding_inputs():
    rng = _rng(2)
    V, P, K, H, B, T = 7, 9, 2, 4, 3, 6
    ids = rng.integers(0, V, size=(B, T))
    ids[0, :3] = 3                                     # repeated ids: the scatter-add must sum them
    types = rng.integers(0, K, size=(B, T))
    return ids, types, rng.normal(size=(V, H)), rng.normal(size=(P, H)), rng.normal(size=(K, H))


def check_embeddings_forward(module):
    ids, types, W, P, K = _embedding_inputs()
    got = get_function(module, "embeddings_forward")(ids, types, W, P, K)
    T = ids.shape[1]
    want = layers.embedding_forward(ids, W)[0] + P[:T] + layers.embedding_forward(types, K)[0]
    note = expect_close("embeddings_forward output", got, want, variants={
        "the position embeddings are missing": want - P[:T],
        "the token-type embeddings are missing": want - K[types]})
    return f"matches the reference ({note})"


def check_embeddings_backward(module):
    ids, types, W, P, K = _embedding_inputs()
    fwd = get_function(module, "embeddings_forward")
    bwd = get_function(module, "embeddings_backward")
    w = _rng(3).normal(size=ids.shape + (W.shape[1],))         # loss = sum(x * w), so dL/dx = w
    result = bwd(w.copy(), ids, types, W.shape, P.shape, K.shape)
    if not (isinstance(result, tuple) and len(result) == 3):
        raise Wrong("embeddings_backward must return (dword, dpos, dtype)")
    inputs = {"word table": W, "position table": P, "type table": K}
    analytic = dict(zip(inputs, result))
    repeat_hint = ("a repeated id must receive the SUM of its rows' gradients: `dW[ids] += dx` keeps only one "
                   "of them; use np.add.at(dW, ids.reshape(-1), dx.reshape(-1, H))")
    return expect_gradients("embeddings_backward", lambda: float((fwd(ids, types, W, P, K) * w).sum()),
                            inputs, analytic, max_entries=100, hints={
                                "word table": repeat_hint, "type table": repeat_hint,
                                "position table": "position t is used by every sequence: sum dx over the batch; "
                                                  "rows >= T get zero"})


# =======================================================================================
# Chapter 3 — attention and its backward
# =======================================================================================
def _attention_inputs(seed=4):
    rng = _rng(seed)
    B, H, T, d = 2, 2, 5, 4
    q, k, v = (rng.normal(size=(B, H, T, d)) for _ in range(3))
    mask = np.ones((B, T), dtype=np.int64)
    mask[1, 3:] = 0                                          # the second sequence has 2 padding tokens
    return q, k, v, mask


def check_attention_forward(module):
    q, k, v, mask = _attention_inputs()
    out, _ = _call_pair(module, "attention_forward", q, k, v, mask)
    want, _ = attention_forward_reference(q, k, v, mask)
    unscaled, _ = attention_forward_reference(q * math.sqrt(q.shape[-1]), k, v, mask)
    no_mask, _ = attention_forward_reference(q, k, v, None)
    note = expect_close("attention_forward output", out, want, variants={
        "the scores are not divided by sqrt(d)": unscaled,
        "the padding mask is not applied (add -10000 to the scores of keys whose mask is 0)": no_mask})
    return f"matches the reference with padding ({note})"


def check_attention_backward(module):
    q, k, v, mask = _attention_inputs()
    fwd, bwd = get_function(module, "attention_forward"), get_function(module, "attention_backward")
    w = _rng(5).normal(size=q.shape)
    _, cache = _call_pair(module, "attention_forward", q, k, v, mask)
    result = bwd(w.copy(), cache)
    if not (isinstance(result, tuple) and len(result) == 3):
        raise Wrong("attention_backward must return (dq, dk, dv)")
    inputs = {"q": q, "k": k, "v": v}
    softmax_hint = ("the softmax backward is dS = P * (dP - rowsum(dP * P)); dq and dk also carry the "
                    "1/sqrt(d) of the forward")
    return expect_gradients("attention_backward", lambda: float((fwd(q, k, v, mask)[0] * w).sum()),
                            inputs, dict(zip(inputs, result)), hints={
                                "q": softmax_hint, "k": softmax_hint + "; dk = dS^T q / sqrt(d)",
                                "v": "O = P V, so dV = P^T dO"})


# =======================================================================================
# Chapter 4 — multi-head attention and masking
# =======================================================================================
def check_split_heads(module):
    x = _rng(6).normal(size=(2, 5, 12))
    got = get_function(module, "split_heads")(x, 3)
    want = x.reshape(2, 5, 3, 4).transpose(0, 2, 1, 3)
    note = expect_close("split_heads(x (2, 5, 12), 3)", got, want, rtol=0, atol=0, variants={
        "a plain reshape to (B, nh, T, d) mixes tokens into heads: reshape to (B, T, nh, d), then transpose":
            x.reshape(2, 3, 5, 4)})
    return f"(B, T, H) -> (B, nh, T, d) is right ({note})"


def check_merge_heads(module):
    x = _rng(7).normal(size=(2, 3, 5, 4))
    got = get_function(module, "merge_heads")(x)
    want = x.transpose(0, 2, 1, 3).reshape(2, 5, 12)
    expect_close("merge_heads(x (2, 3, 5, 4))", got, want, rtol=0, atol=0, variants={
        "a plain reshape mixes heads into tokens: transpose to (B, T, nh, d) first": x.reshape(2, 5, 12)})
    return "(B, nh, T, d) -> (B, T, H) is right: the inverse of split_heads"


def check_attention_mask_bias(module):
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    fn = get_function(module, "attention_mask_bias")
    for dtype in (np.float32, np.float64):
        got = fn(mask, dtype)
        want = additive_mask(mask, np.dtype(dtype))
        if getattr(got, "dtype", None) != np.dtype(dtype):
            raise Wrong(f"attention_mask_bias(mask, {dtype.__name__}) has dtype {getattr(got, 'dtype', None)}; "
                        f"expected {dtype.__name__}")
        expect_close(f"attention_mask_bias(mask (2, 4), {dtype.__name__})", got, want, variants={
            "the bias has the wrong sign: it must be -10000 (not +10000) at padding": -want,
            "the bias is on the real tokens: -10000 goes where the mask is 0 (padding)":
                (mask * -10000.0)[:, None, None, :]})
    return "(B, T) -> (B, 1, 1, T) bias with 0 / -10000, broadcasting over heads and queries"


# =======================================================================================
# Chapter 5 — LayerNorm and GELU
# =======================================================================================
def _ln_inputs():
    rng = _rng(8)
    return rng.normal(1.0, 2.0, size=(3, 4, 6)), rng.normal(size=6), rng.normal(size=6)


def check_layernorm_forward(module):
    x, gamma, beta = _ln_inputs()
    y, _ = _call_pair(module, "layernorm_forward", x, gamma, beta)
    want, _ = layers.layernorm_forward(x, gamma, beta, 1e-12)
    mean = x.mean(-1, keepdims=True)
    unbiased = (x - mean) / x.std(-1, ddof=1, keepdims=True) * gamma + beta
    note = expect_close("layernorm_forward output", y, want, variants={
        "the variance is the unbiased one (ddof=1); LayerNorm divides by C": unbiased,
        "gamma and beta are not applied": (want - beta) / gamma})
    return f"matches the reference ({note})"


def check_layernorm_backward(module):
    x, gamma, beta = _ln_inputs()
    fwd, bwd = get_function(module, "layernorm_forward"), get_function(module, "layernorm_backward")
    w = _rng(9).normal(size=x.shape)
    _, cache = _call_pair(module, "layernorm_forward", x, gamma, beta)
    result = bwd(w.copy(), cache)
    if not (isinstance(result, tuple) and len(result) == 3):
        raise Wrong("layernorm_backward must return (dx, dgamma, dbeta)")
    inputs = {"x": x, "gamma": gamma, "beta": beta}
    return expect_gradients("layernorm_backward", lambda: float((fwd(x, gamma, beta)[0] * w).sum()),
                            inputs, dict(zip(inputs, result)), hints={
                                "x": "dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * "
                                     "gamma: both mean terms are needed (the mean and the variance depend on x)",
                                "gamma": "dgamma = sum over all rows of dy * xhat",
                                "beta": "dbeta = sum over all rows of dy"})


def check_gelu_forward(module):
    x = np.linspace(-5, 5, 41)
    y, _ = _call_pair(module, "gelu_forward", x)
    want, _ = layers.gelu_forward(x)
    tanh_approx = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    note = expect_close("gelu_forward output", y, want, rtol=1e-9, atol=1e-12, variants={
        "the tanh approximation; BERT uses the exact GELU, x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))": tanh_approx})
    return f"exact erf GELU ({note})"


def check_gelu_backward(module):
    x = np.linspace(-4, 4, 33) + 0.01
    fwd, bwd = get_function(module, "gelu_forward"), get_function(module, "gelu_backward")
    w = _rng(10).normal(size=x.shape)
    _, cache = _call_pair(module, "gelu_forward", x)
    dx = bwd(w.copy(), cache)
    return expect_gradients("gelu_backward", lambda: float((fwd(x)[0] * w).sum()), {"x": x}, {"x": dx},
                            hints={"x": "d/dx [x Phi(x)] = Phi(x) + x phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi)"})


# =======================================================================================
# Chapter 6 — the encoder block and the residual stream
# =======================================================================================
FFN_NAMES = ("x", "w1", "b1", "w2", "b2", "gamma", "beta")


def _ffn_inputs():
    rng = _rng(11)
    B, T, H, I = 2, 3, 4, 8
    return {"x": rng.normal(size=(B, T, H)), "w1": rng.normal(0, 0.5, size=(I, H)), "b1": rng.normal(size=I),
            "w2": rng.normal(0, 0.5, size=(H, I)), "b2": rng.normal(size=H), "gamma": rng.normal(size=H),
            "beta": rng.normal(size=H)}


def _ffn_reference(p):
    h, _ = layers.linear_forward(p["x"], p["w1"], p["b1"])
    g, _ = layers.gelu_forward(h)
    f, _ = layers.linear_forward(g, p["w2"], p["b2"])
    return layers.layernorm_forward(p["x"] + f, p["gamma"], p["beta"], 1e-12)[0], f


def check_ffn_block_forward(module):
    p = _ffn_inputs()
    y, _ = _call_pair(module, "ffn_block_forward", *(p[n] for n in FFN_NAMES))
    want, f = _ffn_reference(p)
    no_residual = layers.layernorm_forward(f, p["gamma"], p["beta"], 1e-12)[0]
    note = expect_close("ffn_block_forward output", y, want, variants={
        "the residual is missing: LayerNorm(x + FFN(x)), not LayerNorm(FFN(x))": no_residual})
    return f"matches the reference ({note})"


def check_ffn_block_backward(module):
    p = _ffn_inputs()
    fwd, bwd = get_function(module, "ffn_block_forward"), get_function(module, "ffn_block_backward")
    w = _rng(12).normal(size=p["x"].shape)
    _, cache = _call_pair(module, "ffn_block_forward", *(p[n] for n in FFN_NAMES))
    grads = bwd(w.copy(), cache)
    if not isinstance(grads, dict):
        raise Wrong(f"ffn_block_backward must return a dict with keys {', '.join('d' + n for n in FFN_NAMES)}")
    missing = ["d" + n for n in FFN_NAMES if "d" + n not in grads]
    if missing:
        raise Wrong(f"ffn_block_backward's dict lacks {', '.join(missing)}")
    return expect_gradients("ffn_block_backward",
                            lambda: float((fwd(*(p[n] for n in FFN_NAMES))[0] * w).sum()), p,
                            {n: grads["d" + n] for n in FFN_NAMES}, hints={
                                "x": "x reaches the output twice, through the block and straight into the "
                                     "residual sum: dx = dsum + (gradient through the block)",
                                "w1": "dW1 = dh^T x over all rows (dh = gelu_backward of dg)",
                                "w2": "dW2 = dsum^T gelu(h) over all rows"})


# =======================================================================================
# Chapter 7 — MLM / NSP heads and their losses
# =======================================================================================
def _ce_inputs():
    rng = _rng(13)
    logits = rng.normal(0, 2, size=(7, 5))
    labels = rng.integers(0, 5, size=7)
    labels[[1, 4]] = -100                                     # two rows are not predicted
    return logits, labels


def check_gather_masked(module):
    rng = _rng(14)
    seq = rng.normal(size=(2, 6, 3))
    labels = np.full((2, 6), -100)
    labels[0, 2], labels[0, 5], labels[1, 1] = 7, 3, 9
    result = get_function(module, "gather_masked")(seq, labels)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise Wrong("gather_masked must return (rows (N, H), targets (N,))")
    rows, targets = result
    expect_close("gather_masked rows", rows, seq[[0, 0, 1], [2, 5, 1]], rtol=0, atol=0)
    expect_close("gather_masked targets", targets, np.array([7, 3, 9]), rtol=0, atol=0)
    return "picks the labelled rows in row-major order"


def check_cross_entropy_forward(module):
    logits, labels = _ce_inputs()
    loss, _ = _call_pair(module, "cross_entropy_forward", logits, labels)
    want, _ = layers.cross_entropy_forward(logits, labels)
    valid = labels != -100
    all_rows = float(want) * valid.sum() / len(labels)
    expect_close("cross_entropy_forward loss", loss, want, variants={
        "the mean is over ALL rows; it must be over the rows whose label is not -100": all_rows})
    big = logits * 400.0                                        # exp(2000) overflows without the max shift
    loss_big, _ = _call_pair(module, "cross_entropy_forward", big, labels)
    if not np.isfinite(loss_big):
        raise Wrong("cross_entropy_forward overflows for large logits: subtract the row maximum before exp")
    expect_close("cross_entropy_forward loss on large logits", loss_big, layers.cross_entropy_forward(big, labels)[0])
    return "matches the reference, ignores -100 rows, stable for large logits"


def check_cross_entropy_backward(module):
    logits, labels = _ce_inputs()
    fwd, bwd = get_function(module, "cross_entropy_forward"), get_function(module, "cross_entropy_backward")
    _, cache = _call_pair(module, "cross_entropy_forward", logits, labels)
    dlogits = bwd(cache)
    return expect_gradients("cross_entropy_backward", lambda: float(fwd(logits, labels)[0]),
                            {"logits": logits}, {"logits": dlogits}, hints={
                                "logits": "(softmax - onehot) / (number of counted rows) on counted rows, 0 on "
                                          "rows whose label is -100"})


# =======================================================================================
# Chapter 8 — the masking recipe
# =======================================================================================
VOCAB_WORDS = [f"w{i}" for i in range(500)]


def _masking_sequences(n=2500, seed=15):
    rng = random.Random(seed)
    sequences = []
    for _ in range(n):
        a = [rng.choice(VOCAB_WORDS) for _ in range(rng.randint(2, 70))]
        b = [rng.choice(VOCAB_WORDS) for _ in range(rng.randint(2, 70))]
        sequences.append(["[CLS]"] + a + ["[SEP]"] + b + ["[SEP]"])
    return sequences


def _within(observed, expected, n, z=5.0):
    return abs(observed - expected) <= z * math.sqrt(expected * (1 - expected) / n) + 1e-3


def check_mask_tokens(module):
    fn = get_function(module, "mask_tokens")
    sequences = _masking_sequences()
    rng = random.Random(16)
    n_pred = n_mask = n_keep = n_random = 0
    first_half = 0
    for s, tokens in enumerate(sequences):
        original = list(tokens)
        result = fn(tokens, rng, VOCAB_WORDS, 0.15, 20)
        if not (isinstance(result, tuple) and len(result) == 3):
            raise Wrong("mask_tokens must return (output_tokens, positions, labels)")
        out, positions, labels = result
        where = f"sequence {s} ({len(tokens)} tokens)"
        if tokens != original:
            raise Wrong("mask_tokens changed its input list: build a new list for the output")
        if len(out) != len(tokens):
            raise Wrong(f"{where}: the output has {len(out)} tokens; masking must keep the length")
        positions = list(positions)
        expected_n = min(20, max(1, int(round(len(tokens) * 0.15))))
        if len(positions) != expected_n:
            raise Wrong(f"{where}: {len(positions)} positions predicted; expected min(max_predictions, "
                        f"max(1, round(len * masked_lm_prob))) = {expected_n}")
        if positions != sorted(set(positions)):
            raise Wrong(f"{where}: positions must be distinct and increasing; got {positions}")
        specials = [p for p in positions if tokens[p] in ("[CLS]", "[SEP]")]
        if specials:
            raise Wrong(f"{where}: position {specials[0]} is {tokens[specials[0]]}: [CLS] and [SEP] are never masked")
        if list(labels) != [tokens[p] for p in positions]:
            raise Wrong(f"{where}: labels must be the ORIGINAL tokens at the masked positions")
        chosen = set(positions)
        changed = [i for i in range(len(tokens)) if i not in chosen and out[i] != tokens[i]]
        if changed:
            raise Wrong(f"{where}: token {changed[0]} changed but is not among the predicted positions")
        candidates = [i for i, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]")]
        half = candidates[len(candidates) // 2]
        for p in positions:
            n_pred += 1
            first_half += p < half
            if out[p] == "[MASK]":
                n_mask += 1
            elif out[p] == tokens[p]:
                n_keep += 1
            else:
                n_random += 1
                if out[p] not in VOCAB_WORDS:
                    raise Wrong(f"{where}: position {p} was replaced by {out[p]!r}, which is not in vocab_words")
    shares = f"[MASK] {n_mask / n_pred:.3f}, random {n_random / n_pred:.3f}, kept {n_keep / n_pred:.3f}"
    keep_expected = 0.1 + 0.1 / len(VOCAB_WORDS)              # a random word can be the original one
    if not (_within(n_mask / n_pred, 0.8, n_pred) and _within(n_random / n_pred, 0.1 - 0.1 / len(VOCAB_WORDS), n_pred)
            and _within(n_keep / n_pred, keep_expected, n_pred)):
        raise Wrong(f"over {n_pred} predictions the shares are {shares}; the recipe is 80% [MASK], 10% a random "
                    f"word, 10% unchanged")
    if not _within(first_half / n_pred, 0.5, n_pred, z=6.0):
        raise Wrong(f"{first_half / n_pred:.2f} of the masked positions fall in the first half of the sequence: "
                    "choose positions uniformly at random (shuffle the candidates)")
    again = [fn(t, random.Random(17), VOCAB_WORDS, 0.15, 20) for t in sequences[:5]]
    again2 = [fn(t, random.Random(17), VOCAB_WORDS, 0.15, 20) for t in sequences[:5]]
    if [a[1] for a in again] != [a[1] for a in again2]:
        raise Wrong("two calls with equally seeded rngs masked different positions: draw all randomness from "
                    "the `rng` argument, not from `random` or `np.random`")
    return f"{n_pred} predictions over {len(sequences)} sequences: {shares}"


# =======================================================================================
# Chapter 9 — AdamW, warmup, clipping
# =======================================================================================
def check_adamw_step(module):
    fn = get_function(module, "adamw_step")
    rng = _rng(18)
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
            adamw_update_xp(pr, g, mr, vr, np.empty_like(pr), lr=lr, weight_decay=wd, beta1=0.9, beta2=0.999,
                            eps=1e-6, bias_correction1=1 - 0.9 ** t, bias_correction2=1 - 0.999 ** t)
            adamw_update_xp(pl2, g + wd * pl2, ml2, vl2, np.empty_like(pr), lr=lr, weight_decay=0.0, beta1=0.9,
                            beta2=0.999, eps=1e-6, bias_correction1=1 - 0.9 ** t, bias_correction2=1 - 0.999 ** t)
            adamw_update_xp(pnb, g, mnb, vnb, np.empty_like(pr), lr=lr, weight_decay=wd, beta1=0.9, beta2=0.999,
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
    rng = _rng(19)
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
    rng = _rng(20)
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
    rng = _rng(21)
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
    rng = _rng(22)
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
    rng = _rng(23)
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
    rng = _rng(24)
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


# =======================================================================================
# The registry
# =======================================================================================
CHAPTERS = {c.number: c for c in [
    Chapter(1, "tokenization", "tokenization (WordPiece)", [
        Part("basic_tokenize", ("basic_tokenize",), check_basic_tokenize),
        Part("wordpiece", ("wordpiece",), check_wordpiece)]),
    Chapter(2, "embeddings", "embeddings", [
        Part("embeddings_forward", ("embeddings_forward",), check_embeddings_forward),
        Part("embeddings_backward", ("embeddings_forward", "embeddings_backward"), check_embeddings_backward)]),
    Chapter(3, "attention", "scaled dot-product attention and its backward", [
        Part("attention_forward", ("attention_forward",), check_attention_forward),
        Part("attention_backward", ("attention_forward", "attention_backward"), check_attention_backward)]),
    Chapter(4, "multihead", "multi-head attention and masking", [
        Part("split_heads", ("split_heads",), check_split_heads),
        Part("merge_heads", ("merge_heads",), check_merge_heads),
        Part("attention_mask_bias", ("attention_mask_bias",), check_attention_mask_bias)]),
    Chapter(5, "layernorm_gelu", "LayerNorm, GELU and the feed-forward block", [
        Part("layernorm_forward", ("layernorm_forward",), check_layernorm_forward),
        Part("layernorm_backward", ("layernorm_forward", "layernorm_backward"), check_layernorm_backward),
        Part("gelu_forward", ("gelu_forward",), check_gelu_forward),
        Part("gelu_backward", ("gelu_forward", "gelu_backward"), check_gelu_backward)]),
    Chapter(6, "encoder", "the encoder layer and the residual stream", [
        Part("ffn_block_forward", ("ffn_block_forward",), check_ffn_block_forward),
        Part("ffn_block_backward", ("ffn_block_forward", "ffn_block_backward"), check_ffn_block_backward)]),
    Chapter(7, "heads_losses", "the MLM and NSP heads and their losses", [
        Part("gather_masked", ("gather_masked",), check_gather_masked),
        Part("cross_entropy_forward", ("cross_entropy_forward",), check_cross_entropy_forward),
        Part("cross_entropy_backward", ("cross_entropy_forward", "cross_entropy_backward"),
             check_cross_entropy_backward)]),
    Chapter(8, "pretraining_data", "the pretraining data recipe", [
        Part("mask_tokens", ("mask_tokens",), check_mask_tokens)]),
    Chapter(9, "training", "the training loop: AdamW, warmup, clipping", [
        Part("adamw_step", ("adamw_step",), check_adamw_step),
        Part("warmup_linear_lr", ("warmup_linear_lr",), check_warmup_linear_lr),
        Part("clip_by_global_norm", ("clip_by_global_norm",), check_clip_by_global_norm)]),
    Chapter(10, "kernels", "kernels: tiled online-softmax attention", [
        Part("online_softmax_update", ("online_softmax_update",), check_online_softmax_update),
        Part("tiled_attention", ("tiled_attention",), check_tiled_attention)]),
    Chapter(11, "visualization", "what a pretrained BERT attends to", [
        Part("attention_entropy", ("attention_entropy",), check_attention_entropy),
        Part("attention_rollout", ("attention_rollout",), check_attention_rollout)]),
    Chapter(12, "finetuning", "fine-tuning a classifier", [
        Part("classifier_forward", ("classifier_forward",), check_classifier_forward),
        Part("classifier_backward", ("classifier_forward", "classifier_backward"), check_classifier_backward),
        Part("macro_f1", ("macro_f1",), check_macro_f1)]),
]}
