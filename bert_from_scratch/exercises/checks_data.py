r"""Checks for the chapters on the model's inputs: tokenization (1), embeddings (2) and the
pretraining data recipe (8).

Each check takes the learner's module and returns a short success note or raises
:class:`~.grader.Wrong`; :mod:`.checks` lists them per chapter.
"""
from __future__ import annotations

import math
import random

from ..data.tokenizer import SPECIAL_TOKENS, Tokenizer
from ..nn import layers
from .grader import Wrong, expect_close, expect_gradients, fixed_rng, get_function


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
    rng = fixed_rng(2)
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
    w = fixed_rng(3).normal(size=ids.shape + (W.shape[1],))         # loss = sum(x * w), so dL/dx = w
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
