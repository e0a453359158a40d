"""BERT's WordPiece tokenizer, written from scratch: normalise, split, match word pieces.

Text becomes ids in two stages, exactly as in google-research/bert ``tokenization.py`` and
Hugging Face's ``BertTokenizerFast``:

1. **Basic tokenization** (``Tokenizer.basic_tokenize``):
   - special tokens written in the text (``[MASK]``, ``[SEP]`` ...) are kept whole;
   - *clean*: drop NUL, U+FFFD and every control/format character (Unicode category ``C*``)
     except ``\\t \\n \\r``; every whitespace character becomes a plain space;
   - *CJK*: every CJK ideograph is surrounded by spaces, so it is a word of its own;
   - *uncased only*: NFD-decompose, drop the combining marks (category ``Mn``: ``é → e``),
     lowercase character by character;
   - split on whitespace, and cut every punctuation character (Unicode ``P*`` and the ASCII
     symbols ``$ + < = > ^ ` | ~``) out as a word of its own.

2. **WordPiece** (``Tokenizer.wordpiece``): each word is cut greedily, longest match first,
   into pieces from the vocabulary; every piece after the first is spelled with the
   continuation prefix ``##``::

       "unaffable" -> ["un", "##aff", "##able"]

   A word with no complete cover, or longer than 100 characters, becomes ``[UNK]`` whole.

Vocabularies are plain ``vocab.txt`` files, one token per line, the line number is the id.
Ids are always looked up by token: our trained vocabularies put ``[PAD] [UNK] [CLS] [SEP]
[MASK]`` at 0..4, the bert-base-uncased vocabulary has them at 0/100/101/102/103.

``Tokenizer.train`` learns a vocabulary from raw text (see its docstring for the algorithm).
"""
from __future__ import annotations

import heapq
import os
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONTINUATION = "##"
MAX_INPUT_CHARS_PER_WORD = 100


# ----------------------------------------------------------------------------------------------
# character classes (the same definitions as BERT's tokenization.py and HF's BertNormalizer)

def is_whitespace(ch: str) -> bool:
    """Space, tab, newline, carriage return and every other Unicode ``White_Space`` character."""
    return ch in " \t\n\r" or (ch.isspace() and not is_control(ch))


def is_control(ch: str) -> bool:
    """Control, format, surrogate, private-use, unassigned (``C*``), but not ``\\t\\n\\r``: dropped.

    Tab/newline/return count as whitespace instead. Hugging Face (fast and slow) drops all of
    ``C*``; google-research/bert only ``Cc``/``Cf``. Which code points are unassigned depends on
    the Unicode version of Python's ``unicodedata`` (14.0 in Python 3.11) versus the Rust tables.
    """
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch).startswith("C")


def is_punctuation(ch: str) -> bool:
    """Unicode punctuation (``P*``) plus all non-alphanumeric printable ASCII, e.g. ``$ ^ ` ~``."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def is_cjk(ch: str) -> bool:
    """A CJK Unified Ideograph (the blocks BERT lists; Hangul and Kana are *not* in them)."""
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class _CleanTable(dict):
    """``str.translate`` table for the *clean* and *CJK* steps, filled lazily per code point.

    translate() looks every character up here (in C); a miss computes the answer once.
    """

    def __missing__(self, cp: int):
        ch = chr(cp)
        if cp == 0 or cp == 0xFFFD or is_control(ch):
            out = None                      # dropped
        elif is_whitespace(ch):
            out = " "
        elif is_cjk(ch):
            out = f" {ch} "
        else:
            out = ch
        self[cp] = out
        return out


class _SplitTable(dict):
    """``str.translate`` table that surrounds every punctuation character with spaces."""

    def __missing__(self, cp: int):
        ch = chr(cp)
        out = f" {ch} " if is_punctuation(ch) else ch
        self[cp] = out
        return out


class _UncaseSplitTable(dict):
    """``str.translate`` table for NFD text: drop ``Mn`` marks, lowercase, space out punctuation."""

    def __missing__(self, cp: int):
        ch = chr(cp)
        if unicodedata.category(ch) == "Mn":
            out = None
        elif is_punctuation(ch):
            out = f" {ch} "
        else:
            out = ch.lower()
        self[cp] = out
        return out


_CLEAN = _CleanTable()
_SPLIT = _SplitTable()
_UNCASE_SPLIT = _UncaseSplitTable()


# ----------------------------------------------------------------------------------------------

@dataclass
class Encoding:
    """One encoded text or text pair: ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``.

    ``token_type_ids`` are 0 for ``[CLS] a [SEP]`` and 1 for ``b [SEP]``; ``attention_mask`` is
    all ones (padding happens in ``encode_batch``).
    """
    input_ids: list[int]
    token_type_ids: list[int]
    attention_mask: list[int]
    tokens: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def truncate_seq_pair(tokens_a: list, tokens_b: list, max_num_tokens: int) -> None:
    """Shorten the pair in place to ``len(a) + len(b) <= max_num_tokens`` by cutting the end of
    the longer side, as ``_truncate_seq_pair`` in google-research/bert's ``run_classifier``.

    Cutting the longer side keeps as much as possible of a short question or premise. The
    shorter side ``s`` is kept whole if the longer can shrink to ``max(s, max_num_tokens - s)``;
    otherwise both get half, the odd token going to the originally longer side (to ``b`` on a
    tie). That is Hugging Face's ``truncation="longest_first"`` exactly; popping one token at a
    time from the longer side (google-research) gives the same lengths up to that odd token.
    """
    n_a, n_b = len(tokens_a), len(tokens_b)
    if n_a + n_b <= max_num_tokens:
        return
    swap = n_a > n_b
    short, long_ = (n_b, n_a) if swap else (n_a, n_b)
    long_ = short if short > max_num_tokens else max(short, max_num_tokens - short)
    if short + long_ > max_num_tokens:
        short = max_num_tokens // 2
        long_ = short + max_num_tokens % 2
    keep_a, keep_b = (long_, short) if swap else (short, long_)
    del tokens_a[keep_a:]
    del tokens_b[keep_b:]


class Tokenizer:
    """BERT WordPiece tokenizer over a vocabulary ``{token: id}``.

    >>> tok = Tokenizer.from_vocab_file("vocab.txt")            # doctest: +SKIP
    >>> tok.tokenize("Unaffable!")                               # doctest: +SKIP
    ['una', '##ffa', '##ble', '!']
    >>> enc = tok.encode("a question", "its answer", max_length=16)   # doctest: +SKIP
    """

    def __init__(self, vocab: dict[str, int] | Sequence[str], do_lower_case: bool = True):
        if not isinstance(vocab, dict):
            tokens = list(vocab)
            vocab = {}
            for i, t in enumerate(tokens):
                if t in vocab:
                    raise ValueError(f"vocabulary lists token {t!r} twice (ids {vocab[t]} and {i})")
                vocab[t] = i
        ids = sorted(vocab.values())
        if ids != list(range(len(ids))):
            raise ValueError("vocabulary ids must be exactly 0..len(vocab)-1")
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"vocabulary lacks the special token(s) {', '.join(missing)}")
        self.vocab: dict[str, int] = dict(vocab)
        self.ids_to_tokens: list[str] = [""] * len(vocab)
        for t, i in vocab.items():
            self.ids_to_tokens[i] = t
        self.do_lower_case = do_lower_case
        self.pad_token_id = self.vocab["[PAD]"]
        self.unk_token_id = self.vocab["[UNK]"]
        self.cls_token_id = self.vocab["[CLS]"]
        self.sep_token_id = self.vocab["[SEP]"]
        self.mask_token_id = self.vocab["[MASK]"]
        self.special_token_ids = frozenset(self.vocab[t] for t in SPECIAL_TOKENS)
        # special tokens written in the input text are kept whole, as Hugging Face does
        self._special_split = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
        self._word_cache: dict[str, list[str]] = {}

    # -- construction and saving ----------------------------------------------------------

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike, do_lower_case: bool = True) -> "Tokenizer":
        """Read ``vocab.txt`` (one token per line; line ``i`` is id ``i``), or the one in a folder."""
        path = Path(path)
        if path.is_dir():
            path = path / "vocab.txt"
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file {path} does not exist")
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\r\n").strip() for line in f]
        while tokens and tokens[-1] == "":      # a trailing newline is not a token
            tokens.pop()
        if not tokens:
            raise ValueError(f"vocabulary file {path} is empty")
        return cls(tokens, do_lower_case=do_lower_case)

    def save_vocab(self, path: str | os.PathLike) -> Path:
        """Write ``vocab.txt`` (or ``path/vocab.txt`` if ``path`` is a folder); return the file."""
        path = Path(path)
        if path.is_dir():
            path = path / "vocab.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for t in self.ids_to_tokens:
                f.write(t + "\n")
        return path

    @property
    def inv_vocab(self) -> list[str]:
        return self.ids_to_tokens

    def __len__(self) -> int:
        return len(self.ids_to_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.ids_to_tokens)

    # -- text -> word pieces --------------------------------------------------------------

    def basic_tokenize(self, text: str) -> list[str]:
        """Split ``text`` into normalised words and single punctuation characters.

        Every per-character step is a ``str.translate`` (so it runs in C): clean + CJK, then
        (uncased) NFD of the whole string, drop ``Mn``, lowercase, and put spaces around
        punctuation; finally ``str.split()`` on whitespace.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        words: list[str] = []
        for i, part in enumerate(self._special_split.split(text) if "[" in text else (text,)):
            if i % 2 == 1:                  # a special token written in the text
                words.append(part)
            elif part:
                words.extend(self._normalize_and_space(part).split())
        return words

    def _normalize_and_space(self, text: str) -> str:
        text = text.translate(_CLEAN)
        if not self.do_lower_case:
            return text.translate(_SPLIT)
        if text.isascii():
            return text.lower().translate(_SPLIT)
        # Whole-string NFD first (so combining marks come in canonical order), then drop the
        # Mn marks and lowercase character by character, as HF's BertNormalizer does.
        return unicodedata.normalize("NFD", text).translate(_UNCASE_SPLIT)

    def normalize(self, text: str) -> str:
        """The text as the model sees it: words and punctuation joined by single spaces."""
        return " ".join(self.basic_tokenize(text))

    def wordpiece(self, word: str) -> list[str]:
        """Greedy longest-match-first cut of one word into vocabulary pieces (or ``[UNK]``)."""
        cached = self._word_cache.get(word)
        if cached is not None:
            return cached
        if word in self.vocab:
            pieces = [word]
        elif len(word) > MAX_INPUT_CHARS_PER_WORD:
            pieces = ["[UNK]"]
        else:
            pieces = []
            start = 0
            while start < len(word):
                end = len(word)
                piece = None
                while start < end:          # try the longest remaining substring first
                    candidate = word[start:end] if start == 0 else CONTINUATION + word[start:end]
                    if candidate in self.vocab:
                        piece = candidate
                        break
                    end -= 1
                if piece is None:           # no piece covers word[start:]: the whole word is unknown
                    pieces = ["[UNK]"]
                    break
                pieces.append(piece)
                start = end
        if len(self._word_cache) < 1_000_000:
            self._word_cache[word] = pieces
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """Text -> list of word pieces (no ``[CLS]``/``[SEP]`` added)."""
        pieces: list[str] = []
        for word in self.basic_tokenize(text):
            pieces.extend(self.wordpiece(word))
        return pieces

    # -- tokens <-> ids -------------------------------------------------------------------

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Token(s) -> id(s); a token not in the vocabulary maps to ``[UNK]``'s id."""
        if isinstance(tokens, str):
            return self.vocab.get(tokens, self.unk_token_id)
        unk = self.unk_token_id
        return [self.vocab.get(t, unk) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        if isinstance(ids, (int, np.integer)):
            return self.ids_to_tokens[self._check_id(int(ids))]
        return [self.ids_to_tokens[self._check_id(int(i))] for i in ids]

    def _check_id(self, i: int) -> int:
        if not 0 <= i < len(self.ids_to_tokens):
            raise ValueError(f"token id {i} is outside the vocabulary (size {len(self.ids_to_tokens)})")
        return i

    # -- encoding and decoding ------------------------------------------------------------

    def encode(self, text: str, text_pair: str | None = None, max_length: int | None = None,
               add_special_tokens: bool = True) -> Encoding:
        """Encode one text or a pair, as Hugging Face's tokenizer does with ``truncation=True``.

        Single: ``[CLS] a [SEP]``; pair: ``[CLS] a [SEP] b [SEP]`` with token types 0…0 1…1.
        With ``max_length`` the longer side is cut from its end (``truncate_seq_pair``) until the
        whole sequence, specials included, fits.
        """
        tokens_a = self.tokenize(text)
        tokens_b = self.tokenize(text_pair) if text_pair is not None else None
        n_special = (3 if tokens_b is not None else 2) if add_special_tokens else 0
        if max_length is not None:
            if max_length < n_special:
                raise ValueError(f"max_length={max_length} is shorter than the {n_special} special tokens")
            if tokens_b is not None:
                truncate_seq_pair(tokens_a, tokens_b, max_length - n_special)
            else:
                del tokens_a[max_length - n_special:]
        if add_special_tokens:
            tokens = ["[CLS]"] + tokens_a + ["[SEP]"]
            types = [0] * len(tokens)
            if tokens_b is not None:
                tokens += tokens_b + ["[SEP]"]
                types += [1] * (len(tokens_b) + 1)
        else:
            tokens = tokens_a + (tokens_b or [])
            types = [0] * len(tokens_a) + [1] * len(tokens_b or [])
        ids = self.convert_tokens_to_ids(tokens)
        return Encoding(ids, types, [1] * len(ids), tokens)

    def encode_batch(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                     max_length: int = 128) -> dict[str, np.ndarray]:
        """Encode a batch, pad with ``[PAD]`` to the longest sequence (≤ ``max_length``).

        Returns int64 arrays ``input_ids, token_type_ids, attention_mask``, each (B, T); the
        attention mask is 1 on real tokens and 0 on padding.
        """
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of texts; use encode() for one text")
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(text_pairs)} text pairs")
        if len(texts) == 0:
            raise ValueError("encode_batch got an empty list of texts")
        encs = [self.encode(t, text_pairs[i] if text_pairs is not None else None, max_length=max_length)
                for i, t in enumerate(texts)]
        B, T = len(encs), max(len(e) for e in encs)
        input_ids = np.full((B, T), self.pad_token_id, dtype=np.int64)      # (B, T)
        token_type_ids = np.zeros((B, T), dtype=np.int64)                   # (B, T)
        attention_mask = np.zeros((B, T), dtype=np.int64)                   # (B, T)
        for b, e in enumerate(encs):
            n = len(e)
            input_ids[b, :n] = e.input_ids
            token_type_ids[b, :n] = e.token_type_ids
            attention_mask[b, :n] = 1
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool = False) -> str:
        """Ids -> text: pieces joined by spaces, ``##`` continuations glued to the piece before.

        ``skip_special_tokens`` drops ``[PAD] [CLS] [SEP]`` (``[UNK]`` and ``[MASK]`` stand for
        content and stay). ``clean_up_tokenization_spaces`` removes the space before ``. , ! ?``
        and around English contractions, as Hugging Face's option of that name.
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        skip = {self.pad_token_id, self.cls_token_id, self.sep_token_id} if skip_special_tokens else set()
        tokens = [self.ids_to_tokens[self._check_id(int(i))] for i in ids if int(i) not in skip]
        text = " ".join(tokens).replace(" " + CONTINUATION, "")
        if clean_up_tokenization_spaces:
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    # -- training -------------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, do_lower_case: bool = True,
              min_frequency: int = 2) -> "Tokenizer":
        """Learn a WordPiece vocabulary from raw texts, BPE-style (as HF's ``WordPieceTrainer``).

        1. Basic-tokenize every text and count words: ``f(w)``.
        2. Spell each word as characters, the first plain, the rest with ``##``:
           ``"low" -> l ##o ##w``. The vocabulary starts as the special tokens, then every
           character seen, in both spellings (``c`` and ``##c``, so any word of seen characters
           has a cover and never becomes ``[UNK]``; punctuation and CJK only as ``c``), sorted.
        3. Repeat until ``vocab_size``: find the adjacent pair ``(x, y)`` with the largest count
           ``n(x, y) = Σ_w f(w) · #occurrences of x y in w`` (ties: the smaller pair in string
           order, so training is deterministic), stop if ``n < min_frequency``; merge it
           everywhere into ``x + y`` without ``y``'s ``##`` (``##o + ##w -> ##ow``) and add it.

        Only the words that contain the merged pair are touched, and their pair counts are
        updated by difference (remove the word's old pairs, add its new ones); a heap with lazy
        deletion finds the best pair. BBC (~855k words) to 8000 pieces takes seconds.

        Tokenizing new text afterwards uses greedy longest-match (``wordpiece``), not the merges.
        """
        if vocab_size < len(SPECIAL_TOKENS) + 1:
            raise ValueError(f"vocab_size={vocab_size} is too small: the 5 special tokens alone need 5")
        splitter = cls(list(SPECIAL_TOKENS), do_lower_case=do_lower_case)
        word_freq: Counter[str] = Counter()
        for text in texts:
            word_freq.update(splitter.basic_tokenize(text))
        for t in SPECIAL_TOKENS:
            word_freq.pop(t, None)
        if not word_freq:
            raise ValueError("cannot train a vocabulary: the texts contain no words")

        # the words, in a fixed order, as lists of symbols, and their counts
        words = sorted(word_freq)
        freqs = [word_freq[w] for w in words]
        spelled = [[w[0]] + [CONTINUATION + c for c in w[1:]] for w in words]

        chars = sorted({c for w in words for c in w})
        vocab: list[str] = list(SPECIAL_TOKENS)
        seen = set(vocab)
        for c in chars:
            # punctuation and CJK characters are always words of their own: no ``##`` form
            forms = (c,) if is_punctuation(c) or is_cjk(c) else (c, CONTINUATION + c)
            for s in forms:
                if s not in seen:
                    seen.add(s)
                    vocab.append(s)

        # pair -> count, pair -> set of word indices containing it
        pair_count: dict[tuple[str, str], int] = defaultdict(int)
        pair_words: dict[tuple[str, str], set[int]] = defaultdict(set)
        for wi, symbols in enumerate(spelled):
            f = freqs[wi]
            for pair in zip(symbols, symbols[1:]):
                pair_count[pair] += f
                pair_words[pair].add(wi)
        heap = [(-n, pair) for pair, n in pair_count.items()]
        heapq.heapify(heap)

        while len(vocab) < vocab_size and heap:
            neg, pair = heapq.heappop(heap)
            if pair_count.get(pair, 0) != -neg:         # stale entry: the count changed since
                continue
            if -neg < min_frequency:
                break
            x, y = pair
            merged = x + y[len(CONTINUATION):]
            changed: dict[tuple[str, str], int] = defaultdict(int)
            for wi in sorted(pair_words.pop(pair)):
                symbols = spelled[wi]
                f = freqs[wi]
                # merge left to right, non-overlapping
                out: list[str] = []
                i = 0
                while i < len(symbols):
                    if i + 1 < len(symbols) and symbols[i] == x and symbols[i + 1] == y:
                        out.append(merged)
                        i += 2
                    else:
                        out.append(symbols[i])
                        i += 1
                if len(out) == len(symbols):
                    continue
                for p in zip(symbols, symbols[1:]):
                    changed[p] -= f
                for p in zip(out, out[1:]):
                    changed[p] += f
                    pair_words[p].add(wi)
                spelled[wi] = out
            for p, delta in changed.items():
                if delta == 0:
                    continue
                n = pair_count[p] + delta
                if n > 0:
                    pair_count[p] = n
                    heapq.heappush(heap, (-n, p))
                else:
                    pair_count.pop(p, None)
                    pair_words.pop(p, None)
            pair_count.pop(pair, None)
            if merged not in seen:
                seen.add(merged)
                vocab.append(merged)
        return cls(vocab, do_lower_case=do_lower_case)
