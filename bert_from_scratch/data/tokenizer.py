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

The code is in three files: ``text.py`` (stage 1: character classes, normalisation and
splitting), this one (the ``Tokenizer``: vocabulary, stage 2, encoding and decoding) and
``wordpiece_trainer.py`` (the vocabulary trainer).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..constants import VOCAB_NAME
from ..files import atomic_write
from .text import CONTINUATION, SPECIAL_TOKENS, basic_tokenize
from .wordpiece_trainer import train_vocabulary

MAX_INPUT_CHARS_PER_WORD = 100


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


def truncate_longest_first(tokens_a: list, tokens_b: list, max_num_tokens: int) -> None:
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
        self._word_cache: dict[str, list[str]] = {}

    # -- construction and saving ----------------------------------------------------------

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike, do_lower_case: bool = True) -> "Tokenizer":
        """Read ``vocab.txt`` (one token per line; line ``i`` is id ``i``), or the one in a folder."""
        path = Path(path)
        if path.is_dir():
            path = path / VOCAB_NAME
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
            path = path / VOCAB_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, "".join(t + "\n" for t in self.ids_to_tokens))

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
        punctuation; finally ``str.split()`` on whitespace (``text.basic_tokenize``).
        """
        return basic_tokenize(text, self.do_lower_case)

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
        With ``max_length`` the longer side is cut from its end (``truncate_longest_first``) until the
        whole sequence, specials included, fits.
        """
        tokens_a = self.tokenize(text)
        tokens_b = self.tokenize(text_pair) if text_pair is not None else None
        n_special = (3 if tokens_b is not None else 2) if add_special_tokens else 0
        if max_length is not None:
            if max_length < n_special:
                raise ValueError(f"max_length={max_length} is shorter than the {n_special} special tokens")
            if tokens_b is not None:
                truncate_longest_first(tokens_a, tokens_b, max_length - n_special)
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
        deletion finds the best pair. BBC (~855k words) to 8000 pieces takes seconds. The steps
        are functions of ``wordpiece_trainer.py``.

        Tokenizing new text afterwards uses greedy longest-match (``wordpiece``), not the merges.
        """
        return cls(train_vocabulary(texts, vocab_size=vocab_size, do_lower_case=do_lower_case,
                                    min_frequency=min_frequency), do_lower_case=do_lower_case)
