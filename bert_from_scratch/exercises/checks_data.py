r"""Checks for the chapters on the model's inputs: tokenization (1), embeddings (2) and the
pretraining data recipe (8).

Each check takes the learner's module and returns a short success note or raises
:class:`~.grader.Wrong`; :mod:`.checks` lists them per chapter.
"""
from __future__ import annotations

import math
import random
import unicodedata

import numpy as np

from ..data.text import is_cjk, is_punctuation
from ..data.tokenizer import SPECIAL_TOKENS, Tokenizer
from ..nn import layers
from .grader import (READ_ONLY_HINT, Wrong, expect_close, expect_dtype, expect_gradients, fixed_rng, frozen,
                     get_function)


# =======================================================================================
# Chapter 1 — tokenization
# =======================================================================================
BASIC_TEXTS = ["Hello, World!", "Héllo wörld -- it's 3.14!", "naïve café's (test)", "The U.S.A. costs $5.",
               "tab\tand\nnewline   spaces", "Ünïcödé—dash…ellipsis", "MIXED case Words",
               # what a regex tokenizer (\w+ | [^\w\s]) gets wrong: `_` is punctuation, `£` is not,
               # every CJK ideograph is a word of its own (kana and hangul are not ideographs)
               "snake_case and __init__", "It costs £5 (or €6).", "東京タワーで中文字を", "Crème Brûlée à l'Ångström",
               "中文text_with£signs"]
TOY_VOCAB = list(SPECIAL_TOKENS) + ["un", "##aff", "##able", "##a", "##ff", "play", "##ing", "##ed", "##s",
                                     "p", "##l", "##y", "a", "##b", "##c", "ab", "the", "##re", "there"]
TOY_WORDS = ["unaffable", "playing", "played", "plays", "play", "abc", "there", "thereing", "xyz", "playz",
             "a", "ab", "p" * 101]


def _has_mark(word):
    return any(unicodedata.category(c) == "Mn" for c in unicodedata.normalize("NFD", word))


def _basic_tokenize_hints(got, want):
    """What the learner's words show, each diagnosis from what it actually sees in them."""
    hints = []
    if any(w != w.lower() for w in got):
        hints.append("lowercase the text")
    if any(_has_mark(w) for w in got) and not any(_has_mark(w) for w in want):
        hints.append("strip accents: unicodedata.normalize('NFD', ...) then drop category 'Mn' characters")
    if any(len(w) > 1 and any(is_cjk(c) for c in w) for w in got):
        hints.append("every CJK ideograph (U+4E00..U+9FFF and the other CJK Unified Ideograph blocks) is a word "
                     "of its own: put spaces around each one, as BERT does (kana and hangul are not ideographs)")
    if any(len(w) > 1 and "_" in w for w in got):
        hints.append("`_` is punctuation (Unicode category Pc, and ASCII): it is a word of its own; a regex "
                     r"\w counts it as a letter")
    split_symbols = sorted({w for w in got if len(w) == 1 and not is_punctuation(w) and not w.isalnum()
                            and not is_cjk(w) and w not in want})
    if split_symbols:
        hints.append(f"{split_symbols[0]!r} is a symbol (category {unicodedata.category(split_symbols[0])}), not "
                     "punctuation: only Unicode punctuation (categories P*) and the ASCII symbols are cut out, so "
                     "'£5' stays one word (a regex [^\\w\\s] cuts out every symbol)")
    if not hints and any(len(w) > 1 and any(is_punctuation(c) for c in w) for w in got):
        hints.append("every punctuation character must be a word of its own")
    return f" ({'; '.join(hints)})" if hints else ""


def check_basic_tokenize(module):
    fn = get_function(module, "basic_tokenize")
    reference = Tokenizer(list(SPECIAL_TOKENS), do_lower_case=True)
    for text in BASIC_TEXTS:
        got, want = fn(text), reference.basic_tokenize(text)
        if not isinstance(got, list):
            raise Wrong(f"basic_tokenize must return a list of str; got {type(got).__name__}")
        if got != want:
            raise Wrong(f"basic_tokenize({text!r}) returned {got}; expected {want}{_basic_tokenize_hints(got, want)}")
    return f"{len(BASIC_TEXTS)} texts match the package tokenizer (accents, `_`, `£`, CJK included)"


def _wordpiece_variant(word, vocab, longest=True, lookup="##", emit="##", whole_unk=True):
    """WordPiece with one rule changed: the typical mistakes, to recognise them in a learner's output.
    ``lookup`` / ``emit``: the continuation prefix used to look a piece up / to write it out."""
    if len(word) > 100:
        return ["[UNK]"]
    pieces, start = [], 0
    while start < len(word):
        ends = range(len(word), start, -1) if longest else range(start + 1, len(word) + 1)
        end = next((e for e in ends if (word[start:e] if start == 0 else lookup + word[start:e]) in vocab), None)
        if end is None:
            return ["[UNK]"] if whole_unk else pieces + ["[UNK]"]
        pieces.append(word[start:end] if start == 0 else emit + word[start:end])
        start = end
    return pieces


MISSING_PREFIX = ("the '##' continuation prefix is missing: every piece after the first is looked up AND "
                  "returned as '##' + piece")
WHOLE_UNK = "when some part of a word has no piece, the WHOLE word becomes ['[UNK]']"
WORDPIECE_MISTAKES = {
    MISSING_PREFIX: [dict(lookup="", emit=""), dict(lookup="##", emit=""), dict(lookup="", emit="##")],
    "take the LONGEST matching piece first, not the shortest": [dict(longest=False)],
    WHOLE_UNK: [dict(whole_unk=False)],
}


def _wordpiece_diagnosis(outputs, vocab, word, got):
    """A diagnosis only when the learner's function agrees with that mistake on EVERY test word
    (a single word can look like several mistakes), else what the failing word itself shows."""
    for diagnosis, changes in WORDPIECE_MISTAKES.items():
        for change in changes:
            if all(out == _wordpiece_variant(w, vocab, **change) for w, out in outputs.items()):
                return f". Looks like: {diagnosis}"
    if len(got) > 1 and "[UNK]" in got:
        return f". Looks like: {WHOLE_UNK}"
    if len(got) > 1 and any(not p.startswith("##") for p in got[1:]):
        return f". Looks like: {MISSING_PREFIX}"
    matches = [d for d, changes in WORDPIECE_MISTAKES.items()
               if any(got == _wordpiece_variant(word, vocab, **c) for c in changes)]
    if len(matches) == 1:                           # this word alone: only when it is unambiguous
        return f". Looks like: {matches[0]}"
    if len(word) > 100:
        return " (words longer than 100 characters are ['[UNK]'])"
    return ""


def check_wordpiece(module):
    fn = get_function(module, "wordpiece")
    reference = Tokenizer(TOY_VOCAB)
    vocab = set(TOY_VOCAB)
    outputs = {}
    for word in TOY_WORDS:
        outputs[word] = got = fn(word, vocab)
        if not isinstance(got, list):
            raise Wrong(f"wordpiece must return a list of str; got {type(got).__name__}")
        if vocab != set(TOY_VOCAB):
            raise Wrong(f"wordpiece({word!r}) changed the vocabulary it was given: {READ_ONLY_HINT}")
    for word, got in outputs.items():
        want = reference.wordpiece(word)
        if got != want:
            shown = word if len(word) < 20 else word[:8] + f"...({len(word)} chars)"
            raise Wrong(f"wordpiece({shown!r}) returned {got}; expected {want}"
                        f"{_wordpiece_diagnosis(outputs, vocab, word, got)}")
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
    fn = get_function(module, "embeddings_forward")
    got = fn(*frozen(ids, types, W, P, K))
    T = ids.shape[1]
    want = layers.embedding_forward(ids, W)[0] + P[:T] + layers.embedding_forward(types, K)[0]
    note = expect_close("embeddings_forward output", got, want, variants={
        "the position embeddings are missing": want - P[:T],
        "the token-type embeddings are missing": want - K[types]})
    got32 = fn(*frozen(ids, types, *(a.astype(np.float32) for a in (W, P, K))))
    expect_dtype("embeddings_forward output", got32)
    expect_close("embeddings_forward output for float32 tables", got32, want, rtol=1e-5, atol=1e-5)
    return f"matches the reference, float32 stays float32 ({note})"


def check_embeddings_backward(module):
    ids, types, W, P, K = _embedding_inputs()
    fwd = get_function(module, "embeddings_forward")
    bwd = get_function(module, "embeddings_backward")
    w = fixed_rng(3).normal(size=ids.shape + (W.shape[1],))         # loss = sum(x * w), so dL/dx = w
    result = bwd(*frozen(w, ids, types), W.shape, P.shape, K.shape)
    if not (isinstance(result, tuple) and len(result) == 3):
        raise Wrong("embeddings_backward must return (dword, dpos, dtype)")
    inputs = {"word table": W, "position table": P, "type table": K}
    analytic = dict(zip(inputs, result))
    buffered = {}                                                   # what `dW[ids] += dx` gives
    for name, table, index in (("word table", W, ids), ("type table", K, types)):
        g = np.zeros(table.shape)
        g[index] += w
        buffered[name] = {"`dW[ids] += dx` keeps only one of the rows of a repeated id: use "
                          "np.add.at(dW, ids.reshape(-1), dx.reshape(-1, H)), which sums them": g}
    row_hint = ("row v of the table's gradient is the SUM of dx over every position whose id is v "
                "(np.add.at(dW, ids.reshape(-1), dx.reshape(-1, H)))")
    note = expect_gradients("embeddings_backward", lambda: float((fwd(ids, types, W, P, K) * w).sum()),
                            inputs, analytic, max_entries=100, variants=buffered, hints={
                                "word table": row_hint, "type table": row_hint,
                                "position table": "position t is used by every sequence: sum dx over the batch; "
                                                  "rows >= T get zero"})
    result32 = bwd(frozen(w.astype(np.float32)), *frozen(ids, types), W.shape, P.shape, K.shape)
    for name, g in zip(inputs, result32):
        expect_dtype(f"embeddings_backward: the gradient of the {name}", g)
    return note + "; float32 dx gives float32 gradients"


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


def _treatment(out, original):
    return "mask" if out == "[MASK]" else "keep" if out == original else "random"


def _check_rng_use(fn, sequences):
    """Equal seeds -> equal results even when the global random / np.random state differs in
    between; different seeds -> different results. The global states are restored afterwards."""
    saved = random.getstate(), np.random.get_state()
    runs = []
    try:
        for seed, global_seed in ((17, 1), (17, 2), (18, 1)):
            random.seed(global_seed)
            np.random.seed(global_seed)
            results = [fn(list(t), random.Random(seed), VOCAB_WORDS, 0.15, 20) for t in sequences]
            if not all(isinstance(r, tuple) and len(r) == 3 for r in results):
                return                                      # the statistics below say what is wrong
            runs.append([tuple(list(x) for x in r) for r in results])
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    if runs[0] != runs[1]:
        raise Wrong("two calls with equally seeded rngs gave different results when the global `random` / "
                    "`np.random` state differed between them: draw all randomness from the `rng` argument "
                    "(rng.shuffle, rng.random, rng.randrange), not from `random` or `np.random`")
    if runs[0] == runs[2]:
        raise Wrong("calls with differently seeded rngs gave identical results: draw all randomness from the "
                    "`rng` argument, not from a generator of your own or a fixed seed")


def check_mask_tokens(module):
    fn = get_function(module, "mask_tokens")
    sequences = _masking_sequences()
    _check_rng_use(fn, sequences[:20])                  # first: statistics of a misused rng mean nothing
    rng = random.Random(16)
    n_pred = n_mask = n_keep = n_random = 0
    first_half = n_pairs = n_same = 0
    for s, tokens in enumerate(sequences):
        original = list(tokens)
        result = fn(tokens, rng, VOCAB_WORDS, 0.15, 20)
        if not (isinstance(result, tuple) and len(result) == 3):
            raise Wrong("mask_tokens must return (output_tokens, positions, labels)")
        out, positions, labels = result
        where = f"sequence {s} ({len(tokens)} tokens)"
        if tokens != original:
            raise Wrong(f"mask_tokens changed its input list: build a new list for the output ({READ_ONLY_HINT})")
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
        treatments = [_treatment(out[p], tokens[p]) for p in positions]
        n_pairs += len(treatments) - 1
        n_same += sum(a == b for a, b in zip(treatments, treatments[1:]))
        for p, kind in zip(positions, treatments):
            n_pred += 1
            first_half += p < half
            n_mask += kind == "mask"
            n_keep += kind == "keep"
            if kind == "random":
                n_random += 1
                if out[p] not in VOCAB_WORDS:
                    raise Wrong(f"{where}: position {p} was replaced by {out[p]!r}, which is not in vocab_words")
    shares = f"[MASK] {n_mask / n_pred:.3f}, random {n_random / n_pred:.3f}, kept {n_keep / n_pred:.3f}"
    p_keep, p_random = 0.1 + 0.1 / len(VOCAB_WORDS), 0.1 - 0.1 / len(VOCAB_WORDS)   # a random word can be the original
    # independence: two draws agree with probability sum(share^2), whatever the shares are
    p_same = sum((n / n_pred) ** 2 for n in (n_mask, n_random, n_keep))
    if not _within(n_same / n_pairs, p_same, n_pairs, z=6.0):
        raise Wrong(f"{n_same / n_pairs:.3f} of the neighbouring predicted positions of a sequence got the same "
                    f"treatment ([MASK] / random / kept); independent draws agree {p_same:.3f} of the time: draw the "
                    f"80/10/10 choice for EACH position (one rng.random() per position), not once per sequence")
    if not (_within(n_mask / n_pred, 0.8, n_pred) and _within(n_random / n_pred, p_random, n_pred)
            and _within(n_keep / n_pred, p_keep, n_pred)):
        raise Wrong(f"over {n_pred} predictions the shares are {shares}; the recipe is 80% [MASK], 10% a random "
                    f"word, 10% unchanged")
    if not _within(first_half / n_pred, 0.5, n_pred, z=6.0):
        raise Wrong(f"{first_half / n_pred:.2f} of the masked positions fall in the first half of the sequence: "
                    "choose positions uniformly at random (shuffle the candidates)")
    return f"{n_pred} predictions over {len(sequences)} sequences: {shares}, drawn per position from `rng`"
