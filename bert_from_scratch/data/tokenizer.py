"""BERT's WordPiece tokenizer, written from scratch: normalise, split, match word pieces.

Text becomes ids in two stages, exactly as in google-research/bert ``tokenization.py`` and
Hugging Face's ``BertTokenizerFast``:

1. **Basic tokenization** (``Tokenizer.basic_tokenize``):
   - special tokens written in the text (``[MASK]``, ``[SEP]`` ...) are kept whole, and so are
     the words of ``never_split`` written between whitespace;
   - *clean* (``clean_text``): drop NUL, U+FFFD and every control/format character (Unicode
     category ``C*``) except ``\\t \\n \\r``; every whitespace character becomes a plain space;
   - *CJK* (``tokenize_chinese_chars``): every CJK ideograph is surrounded by spaces, so it is a
     word of its own;
   - *strip accents* (``strip_accents``, by default on when uncased): NFD-decompose, drop the
     combining marks (category ``Mn``: ``é → e``);
   - *uncased* (``do_lower_case``): lowercase character by character;
   - split on whitespace, and cut every punctuation character (Unicode ``P*`` and the ASCII
     symbols ``$ + < = > ^ ` | ~``) out as a word of its own.

2. **WordPiece** (``Tokenizer.wordpiece``): each word is cut greedily, longest match first,
   into pieces from the vocabulary; every piece after the first is spelled with the
   continuation prefix ``##``::

       "unaffable" -> ["un", "##aff", "##able"]

   A word with no complete cover, or longer than 100 characters, becomes ``[UNK]`` whole.

**Offsets.** ``encode(text, return_offsets_mapping=True)`` also gives, per token, the
``(start, end)`` character span of ``text`` it came from (``(0, 0)`` for the added ``[CLS]``/``[SEP]``),
exactly as Hugging Face's ``BertTokenizerFast``: spans refer to the *original* text even when
lower-casing or accent stripping changed it (``text.Normalizer.words_with_offsets``).

The options of Hugging Face's ``BertTokenizer`` are there: ``do_lower_case``, ``strip_accents``
(``None`` follows ``do_lower_case``), ``tokenize_chinese_chars``, ``never_split`` and
``clean_text`` (see ``text.Normalizer``).

Vocabularies are plain ``vocab.txt`` files, one token per line, the line number is the id.
Ids are always looked up by token: our trained vocabularies put ``[PAD] [UNK] [CLS] [SEP]
[MASK]`` at 0..4, the bert-base-uncased vocabulary has them at 0/100/101/102/103.

``Tokenizer.train`` learns a vocabulary from raw text (see its docstring for the algorithm).

The code is in five files: ``text.py`` (stage 1: character classes, normalisation and
splitting), this one (the ``Tokenizer``: vocabulary, stage 2, encoding and decoding),
``encoding.py`` (the ``Encoding`` it returns and pair truncation),
``tokenizer_files.py`` (reading and writing ``vocab.txt``, ``tokenizer.json`` and
``tokenizer_config.json``) and ``wordpiece_trainer.py`` (the vocabulary trainer).
"""
from __future__ import annotations

import os
from itertools import repeat
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import tokenizer_files
from .encoding import Encoding, truncate_longest_first  # noqa: F401  (re-exported)
from .text import CONTINUATION, SPECIAL_TOKENS, Normalizer
from .wordpiece_trainer import train_vocabulary

MAX_INPUT_CHARS_PER_WORD = 100
DEFAULT_MAX_LENGTH = 128        # encode_batch's length limit when the model's own is not known


class Tokenizer:
    """BERT WordPiece tokenizer over a vocabulary ``{token: id}``.

    >>> tok = Tokenizer.from_vocab_file("vocab.txt")            # doctest: +SKIP
    >>> tok.tokenize("Unaffable!")                               # doctest: +SKIP
    ['una', '##ffa', '##ble', '!']
    >>> enc = tok.encode("a question", "its answer", max_length=16)   # doctest: +SKIP
    """

    def __init__(self, vocab: dict[str, int] | Sequence[str], do_lower_case: bool = True,
                 strip_accents: bool | None = None, tokenize_chinese_chars: bool = True,
                 never_split: Iterable[str] | None = None, clean_text: bool = True,
                 model_max_length: int | None = None):
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
        self.do_lower_case = bool(do_lower_case)
        self.normalizer = Normalizer(do_lower_case, strip_accents, tokenize_chinese_chars, clean_text, never_split)
        #: the longest input of the model this tokenizer belongs to (None: not known); the default
        #: ``max_length`` of ``encode_batch``. ``pretrained()`` sets it from the model folder.
        self.model_max_length = model_max_length
        self.pad_token_id = self.vocab["[PAD]"]
        self.unk_token_id = self.vocab["[UNK]"]
        self.cls_token_id = self.vocab["[CLS]"]
        self.sep_token_id = self.vocab["[SEP]"]
        self.mask_token_id = self.vocab["[MASK]"]
        self.special_token_ids = frozenset(self.vocab[t] for t in SPECIAL_TOKENS)
        self._word_cache: dict[str, list[str]] = {}

    # -- construction and saving ----------------------------------------------------------

    @property
    def options(self) -> dict:
        """The normalisation options, by Hugging Face's names (what ``tokenizer_config.json`` holds)."""
        n = self.normalizer
        return {"do_lower_case": n.lowercase, "strip_accents": n.strip_accents,
                "tokenize_chinese_chars": n.tokenize_chinese_chars, "clean_text": n.clean_text,
                "never_split": sorted(n.never_split)}

    @classmethod
    def from_vocab_file(cls, path: str | os.PathLike, do_lower_case: bool = True, **options) -> "Tokenizer":
        """Read ``vocab.txt`` (one token per line; line ``i`` is id ``i``), or the one in a folder."""
        return cls(tokenizer_files.read_vocab_txt(path), do_lower_case=do_lower_case, **options)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, vocab_file: str | os.PathLike | None = None) -> "Tokenizer":
        """The tokenizer of a model folder (ours, or one saved by Hugging Face ``transformers`` 4 or 5).

        The vocabulary comes from ``vocab_file``, else ``vocab.txt``, else ``tokenizer.json``; the
        options from ``tokenizer_config.json``, else from ``tokenizer.json``'s normaliser, else
        BERT's defaults (lower-case, strip accents). See ``tokenizer_files.read_folder``.
        """
        tokens, options = tokenizer_files.read_folder(folder, vocab_file)
        return cls(tokens, **options)

    def save_vocab(self, path: str | os.PathLike) -> Path:
        """Write ``vocab.txt`` (or ``path/vocab.txt`` if ``path`` is a folder); return the file."""
        return tokenizer_files.write_vocab_txt(path, self.ids_to_tokens)

    def save_pretrained(self, folder: str | os.PathLike, model_max_length: int | None = None) -> Path:
        """Write ``vocab.txt`` and ``tokenizer_config.json`` into ``folder``; return the folder.

        ``tokenizer_config.json`` tells Hugging Face's ``AutoTokenizer`` the class, the
        lower-casing options, the special tokens and ``model_max_length`` (the longest input the
        model takes: its ``max_position_embeddings``), so ``truncation=True`` cuts where it must.
        """
        return tokenizer_files.write_folder(folder, self.ids_to_tokens, self.options, model_max_length)

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

        Every per-character step (clean, CJK, NFD and drop ``Mn``, lowercase, space out
        punctuation) is one ``str.translate`` (so it runs in C); then split on spaces
        (``text.Normalizer``).
        """
        return self.normalizer.words(text)

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

    def tokenize_with_offsets(self, text: str) -> tuple[list[str], list[tuple[int, int]], list[int]]:
        """``(pieces, offsets, word_ids)``: the pieces of :meth:`tokenize`, each one's ``(start, end)``
        span in ``text`` and the index of the word it belongs to.

        A piece covering characters ``a:b`` of a normalised word spans ``origin[a] : origin[b-1] + 1``
        of the text (``text.Normalizer.words_with_offsets``); ``[UNK]`` spans its whole word.
        """
        pieces: list[str] = []
        offsets: list[tuple[int, int]] = []
        word_ids: list[int] = []
        for w, (word, origin) in enumerate(self.normalizer.words_with_offsets(text)):
            word_pieces = self.wordpiece(word)
            a = 0
            for piece in word_pieces:
                n = len(word) if piece == "[UNK]" and word_pieces == ["[UNK]"] else \
                    len(piece) - (len(CONTINUATION) if a else 0)
                offsets.append((origin[a], origin[a + n - 1] + 1))
                a += n
            pieces.extend(word_pieces)
            word_ids.extend([w] * len(word_pieces))
        return pieces, offsets, word_ids

    # -- tokens <-> ids -------------------------------------------------------------------

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Token(s) -> id(s); a token not in the vocabulary maps to ``[UNK]``'s id."""
        if isinstance(tokens, str):
            return self.vocab.get(tokens, self.unk_token_id)
        return list(map(self.vocab.get, tokens, repeat(self.unk_token_id)))     # the loop in C: ~11M tokens a job

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
               add_special_tokens: bool = True, return_offsets_mapping: bool = False) -> Encoding:
        """Encode one text or a pair, as Hugging Face's tokenizer does with ``truncation=True``.

        Single: ``[CLS] a [SEP]``; pair: ``[CLS] a [SEP] b [SEP]`` with token types 0…0 1…1.
        With ``max_length`` the longer side is cut from its end (``truncate_longest_first``) until the
        whole sequence, specials included, fits. ``return_offsets_mapping``: fill ``offsets`` and
        ``word_ids`` (each side's spans refer to its own text, as Hugging Face's).
        """
        sides = [text] if text_pair is None else [text, text_pair]
        if return_offsets_mapping:
            tokenized = [self.tokenize_with_offsets(t) for t in sides]
        else:
            tokenized = [(self.tokenize(t), None, None) for t in sides]
        tokens_a = tokenized[0][0]
        tokens_b = tokenized[1][0] if text_pair is not None else None
        n_special = len(sides) + 1 if add_special_tokens else 0
        if max_length is not None:
            if max_length < n_special:
                raise ValueError(f"max_length={max_length} is shorter than the {n_special} special tokens")
            if tokens_b is not None:
                truncate_longest_first(tokens_a, tokens_b, max_length - n_special)
            else:
                del tokens_a[max_length - n_special:]
        k = int(add_special_tokens)                 # [CLS] before the first side, [SEP] after each side
        tokens, types, specials, offsets, word_ids = ["[CLS]"] * k, [0] * k, [1] * k, [(0, 0)] * k, [None] * k
        for side, (pieces, spans, words) in enumerate(tokenized):
            n = len(pieces)                         # after truncation
            tokens += pieces + ["[SEP]"] * k
            types += [side] * (n + k)
            specials += [0] * n + [1] * k
            if return_offsets_mapping:
                offsets += spans[:n] + [(0, 0)] * k
                word_ids += words[:n] + [None] * k
        ids = self.convert_tokens_to_ids(tokens)
        if not return_offsets_mapping:
            offsets = word_ids = None
        return Encoding(ids, types, [1] * len(ids), tokens, specials, offsets, word_ids)

    def encode_batch(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                     max_length: int | None = None, return_offsets_mapping: bool = False) -> dict[str, np.ndarray]:
        """Encode a batch, pad with ``[PAD]`` to the longest sequence (≤ ``max_length``).

        ``max_length`` defaults to ``model_max_length`` (the model's own limit, e.g. 256 for
        all-MiniLM-L6-v2), and to ``DEFAULT_MAX_LENGTH`` (128) for a tokenizer of no known model.

        Returns int64 arrays ``input_ids, token_type_ids, attention_mask``, each (B, T); the
        attention mask is 1 on real tokens and 0 on padding. ``return_offsets_mapping`` adds
        ``offset_mapping`` (B, T, 2): each token's ``(start, end)`` in its text, ``(0, 0)`` on
        specials and padding (Hugging Face's ``return_tensors="np"`` layout).
        """
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of texts; use encode() for one text")
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(text_pairs)} text pairs")
        if len(texts) == 0:
            raise ValueError("encode_batch got an empty list of texts")
        if max_length is None:
            max_length = self.model_max_length or DEFAULT_MAX_LENGTH
        encs = [self.encode(t, text_pairs[i] if text_pairs is not None else None, max_length=max_length,
                            return_offsets_mapping=return_offsets_mapping)
                for i, t in enumerate(texts)]
        B, T = len(encs), max(len(e) for e in encs)
        input_ids = np.full((B, T), self.pad_token_id, dtype=np.int64)      # (B, T)
        token_type_ids = np.zeros((B, T), dtype=np.int64)                   # (B, T)
        attention_mask = np.zeros((B, T), dtype=np.int64)                   # (B, T)
        offset_mapping = np.zeros((B, T, 2), dtype=np.int64)                # (B, T, 2)
        for b, e in enumerate(encs):
            n = len(e)
            input_ids[b, :n] = e.input_ids
            token_type_ids[b, :n] = e.token_type_ids
            attention_mask[b, :n] = 1
            if return_offsets_mapping:
                offset_mapping[b, :n] = np.asarray(e.offsets, dtype=np.int64).reshape(n, 2)
        out = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
        if return_offsets_mapping:
            out["offset_mapping"] = offset_mapping
        return out

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
