"""The WordPiece vocabulary trainer behind ``Tokenizer.train``: BPE-style merges of symbol pairs.

:func:`train_vocabulary` runs the steps, one function each:

1. :func:`count_words`: the word counts ``f(w)`` of the basic-tokenized texts;
2. :func:`spell_words` and :func:`initial_alphabet`: words as characters (``l ##o ##w``), and
   the vocabulary before any merge (special tokens, then every character seen);
3. :func:`generate_merges`: the merge loop, best pair first, over :class:`PairStatistics`
   (pair counts kept up to date by difference, and a max-heap with lazy deletion);
4. :func:`extend_vocabulary`: the alphabet plus the new merged symbols, up to ``vocab_size``.

The result is a list of tokens whose positions are the ids; ``Tokenizer.train`` wraps it in a
``Tokenizer``. Training is deterministic: the words are sorted, and ties between pairs of equal
count go to the smaller pair in string order.
"""
from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from typing import Iterable, Iterator, Sequence

from .text import CONTINUATION, SPECIAL_TOKENS, basic_tokenize, is_cjk, is_punctuation

Pair = tuple[str, str]


def count_words(texts: Iterable[str], do_lower_case: bool = True) -> Counter[str]:
    """``f(w)``: how many times each word of ``texts`` occurs, after basic tokenization.

    Special tokens written in the texts are kept whole by the basic tokenizer but are no words
    to learn pieces of: they are left out. Raises ``ValueError`` if no word is left.
    """
    word_freq: Counter[str] = Counter()
    for text in texts:
        word_freq.update(basic_tokenize(text, do_lower_case))
    for t in SPECIAL_TOKENS:
        word_freq.pop(t, None)
    if not word_freq:
        raise ValueError("cannot train a vocabulary: the texts contain no words")
    return word_freq


def spell_words(words: Sequence[str]) -> list[list[str]]:
    """Each word as a list of symbols, one a character, the first plain, the rest with ``##``.

    ``"low" -> ["l", "##o", "##w"]``: the starting point of the merges.
    """
    return [[w[0]] + [CONTINUATION + c for c in w[1:]] for w in words]


def initial_alphabet(words: Iterable[str]) -> list[str]:
    """The vocabulary before any merge: the special tokens, then every character of ``words``.

    Characters come in sorted order, each in both spellings ``c`` and ``##c``, so that any word
    of seen characters has a cover and never becomes ``[UNK]``. Punctuation and CJK characters
    are always words of their own, so they get only the ``c`` form.
    """
    vocab: list[str] = list(SPECIAL_TOKENS)
    seen = set(vocab)
    for c in sorted({c for w in words for c in w}):
        forms = (c,) if is_punctuation(c) or is_cjk(c) else (c, CONTINUATION + c)
        for s in forms:
            if s not in seen:
                seen.add(s)
                vocab.append(s)
    return vocab


def merge_word(symbols: list[str], x: str, y: str, merged: str) -> list[str]:
    """``symbols`` with every adjacent ``x y`` replaced by ``merged``, left to right, non-overlapping."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == x and symbols[i + 1] == y:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


class PairStatistics:
    """The adjacent symbol pairs of the spelled words, kept up to date as pairs are merged.

    - ``count[(x, y)] = n(x, y) = Σ_w f(w) · #occurrences of x y in w`` (only pairs with n > 0);
    - ``words[(x, y)]``: the indices of the words that (may) contain the pair, a superset;
    - a heap of ``(-n, pair)``: the largest count first, ties to the smaller pair. An entry is
      pushed whenever a count changes; stale entries (count changed since) are skipped on pop.

    ``spelled`` (the words as symbol lists) is updated in place by :meth:`merge`.
    """

    def __init__(self, spelled: list[list[str]], freqs: Sequence[int]):
        self.spelled = spelled
        self.freqs = freqs
        self.count: dict[Pair, int] = defaultdict(int)
        self.words: dict[Pair, set[int]] = defaultdict(set)
        for wi, symbols in enumerate(spelled):
            f = freqs[wi]
            for pair in zip(symbols, symbols[1:]):
                self.count[pair] += f
                self.words[pair].add(wi)
        self._heap = [(-n, pair) for pair, n in self.count.items()]
        heapq.heapify(self._heap)

    def pop_best(self) -> tuple[Pair, int] | None:
        """Remove and return the pair with the largest count, and that count; None if none is left."""
        while self._heap:
            neg, pair = heapq.heappop(self._heap)
            if self.count.get(pair, 0) == -neg:        # else stale: the count changed since
                return pair, -neg
        return None

    def merge(self, pair: Pair) -> str:
        """Merge ``pair`` in every word holding it; return the new symbol ``x + y`` minus ``##``.

        ``##o + ##w -> ##ow``. Only the words that contain the pair are touched, and the counts
        are updated by difference: each changed word's old pairs are subtracted (times ``f(w)``)
        and its new pairs added.
        """
        x, y = pair
        merged = x + y[len(CONTINUATION):]
        changed: dict[Pair, int] = defaultdict(int)
        for wi in sorted(self.words.pop(pair)):
            symbols = self.spelled[wi]
            f = self.freqs[wi]
            out = merge_word(symbols, x, y, merged)
            if len(out) == len(symbols):
                continue
            for p in zip(symbols, symbols[1:]):
                changed[p] -= f
            for p in zip(out, out[1:]):
                changed[p] += f
                self.words[p].add(wi)
            self.spelled[wi] = out
        self._apply(changed)
        self.count.pop(pair, None)
        return merged

    def _apply(self, changed: dict[Pair, int]) -> None:
        """Add the count differences ``changed``; a pair whose count reaches 0 is forgotten."""
        for p, delta in changed.items():
            if delta == 0:
                continue
            n = self.count[p] + delta
            if n > 0:
                self.count[p] = n
                heapq.heappush(self._heap, (-n, p))
            else:
                self.count.pop(p, None)
                self.words.pop(p, None)


def generate_merges(spelled: list[list[str]], freqs: Sequence[int], min_frequency: int = 2) -> Iterator[str]:
    """Yield the merged symbols in order: each time, merge the pair ``(x, y)`` of largest ``n(x, y)``.

    Lazy: a pair is merged only when the next symbol is asked for. Stops when no pair is left or
    the best has ``n < min_frequency``. ``spelled`` is updated in place.
    """
    stats = PairStatistics(spelled, freqs)
    while (best := stats.pop_best()) is not None:
        pair, n = best
        if n < min_frequency:
            return
        yield stats.merge(pair)


def extend_vocabulary(vocab: Sequence[str], new_symbols: Iterable[str], vocab_size: int) -> list[str]:
    """``vocab``, then each of ``new_symbols`` not in it yet, in order, until ``vocab_size`` tokens.

    No more symbols are drawn once the vocabulary is full; a ``vocab`` that is already larger
    than ``vocab_size`` is returned as it is.
    """
    vocab = list(vocab)
    seen = set(vocab)
    new_symbols = iter(new_symbols)
    while len(vocab) < vocab_size:
        symbol = next(new_symbols, None)
        if symbol is None:
            break
        if symbol not in seen:
            seen.add(symbol)
            vocab.append(symbol)
    return vocab


def train_vocabulary(texts: Iterable[str], vocab_size: int = 8000, do_lower_case: bool = True,
                     min_frequency: int = 2) -> list[str]:
    """The WordPiece vocabulary (a token list; position = id) learned from ``texts``.

    See ``Tokenizer.train`` for the algorithm; this returns the tokens it wraps.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small: the 5 special tokens alone need 5")
    word_freq = count_words(texts, do_lower_case)
    words = sorted(word_freq)                   # a fixed order, so that training is deterministic
    merges = generate_merges(spell_words(words), [word_freq[w] for w in words], min_frequency)
    return extend_vocabulary(initial_alphabet(words), merges, vocab_size)
