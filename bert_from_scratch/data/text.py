"""Stage 1 of BERT's tokenization, the basic tokenizer: clean, normalise and split text into words.

The steps are those of google-research/bert's ``BasicTokenizer`` and Hugging Face's
``BertNormalizer`` + ``BertPreTokenizer``, listed in order in ``tokenizer.py``'s docstring. Here:

- the character classes: :func:`is_whitespace`, :func:`is_control`, :func:`is_punctuation`,
  :func:`is_cjk`;
- :class:`Normalizer`: every step works on one code point at a time, so all of them together are
  one ``str.translate`` table (filled lazily, one code point at a time, so the per-character
  work runs in C). A character becomes ``""`` (dropped), one character, or several (``é`` ->
  ``e`` + accent under NFD, a CJK ideograph or a punctuation mark -> ``" c "``);
- :func:`basic_tokenize` keeps special tokens written in the text whole and splits the rest on
  spaces; :func:`basic_tokenize_with_offsets` does the same and also says, for every character
  of every word, which character of the *original* text it came from. Because each original
  character becomes its own piece of the normalised text, that is just a running count of the
  pieces' lengths -- the alignment Hugging Face's Rust ``NormalizedString`` keeps.

One known difference from a whole-string NFD: the decomposition is done per code point, so the
canonical reordering of adjacent combining marks is skipped. With accent stripping every
reordered mark but 25 rare ``Mc`` characters is dropped anyway; without it there is no NFD.

The tokenizer (``tokenizer.py``) and the vocabulary trainer (``wordpiece_trainer.py``) both
split text with :func:`basic_tokenize`.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from itertools import chain, repeat

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONTINUATION = "##"         # WordPiece's prefix of every piece that continues a word

# special tokens written in the input text are kept whole, as Hugging Face does
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
_WORD = re.compile("[^ ]+")


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


def _splits_words(ch: str) -> bool:
    """Whitespace as the pre-tokenizer sees it (Rust's ``char::is_whitespace``: no ``\\x1c``-``\\x1f``)."""
    return ch.isspace() and not 0x1C <= ord(ch) <= 0x1F


# ----------------------------------------------------------------------------------------------
# the normaliser: one str.translate table per set of options

class _Table(dict):
    """``str.translate`` table ``code point -> str``, filled on first sight of each code point."""

    def __init__(self, lowercase: bool, strip_accents: bool, chinese: bool, clean: bool):
        super().__init__()
        self.options = (lowercase, strip_accents, chinese, clean)

    def __missing__(self, cp: int) -> str:
        lowercase, strip_accents, chinese, clean = self.options
        ch = chr(cp)
        if clean and (cp == 0 or cp == 0xFFFD or is_control(ch)):
            out = ""                                            # clean: dropped
        elif (clean and is_whitespace(ch)) or _splits_words(ch):
            out = " "                                           # any whitespace: a plain space
        elif chinese and is_cjk(ch):
            out = f" {ch} "                                     # a word of its own
        else:
            if strip_accents:                                   # NFD, then drop the marks (é -> e)
                ch = "".join(c for c in unicodedata.normalize("NFD", ch) if unicodedata.category(c) != "Mn")
            if lowercase:
                ch = "".join(c.lower() for c in ch)
            out = "".join(f" {c} " if is_punctuation(c) else c for c in ch)   # pre-tokenizer: cut punctuation
        self[cp] = out
        return out


@lru_cache(maxsize=None)
def _table(lowercase: bool, strip_accents: bool, chinese: bool, clean: bool) -> _Table:
    return _Table(lowercase, strip_accents, chinese, clean)


class Normalizer:
    """Hugging Face's ``BertNormalizer`` followed by the punctuation cut of ``BertPreTokenizer``.

    lowercase: lower-case every character (``do_lower_case``).
    strip_accents: NFD-decompose and drop the combining marks (``Mn``); ``None`` follows
        ``lowercase``, as in original BERT and Hugging Face.
    tokenize_chinese_chars: every CJK ideograph becomes a word of its own.
    clean_text: drop NUL, U+FFFD and every control/format character (``C*`` but ``\\t\\n\\r``),
        and turn every whitespace character into a space. With ``False`` control characters are
        kept as ordinary characters (Hugging Face's ``clean_text=False``).
    never_split: words (as written between whitespace) that are kept exactly as they are: not
        lower-cased, not stripped, not cut at punctuation (the slow ``BasicTokenizer``'s option;
        it also leaves uncut a word that only its lower-cased form makes one of them, ``E.g.``
        for ``e.g.``: here a word must be written exactly as listed).
    """

    def __init__(self, lowercase: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, clean_text: bool = True, never_split=()):
        self.lowercase = bool(lowercase)
        self.strip_accents = self.lowercase if strip_accents is None else bool(strip_accents)
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.clean_text = bool(clean_text)
        if isinstance(never_split, str):
            raise TypeError(f"never_split must be a list of words, not the string {never_split!r}")
        self.never_split = frozenset(w for w in never_split or () if w)
        self.table = _table(self.lowercase, self.strip_accents, self.tokenize_chinese_chars, self.clean_text)
        # a never_split word is one between whitespace (or the ends of the text)
        self._never = (re.compile(r"(?<!\S)(" + "|".join(map(re.escape, sorted(self.never_split, key=len,
                                                                                  reverse=True))) + r")(?!\S)")
                       if self.never_split else None)

    def spaced(self, text: str) -> str:
        """The normalised text with punctuation spaced out; its words are split on ``" "``."""
        return text.translate(self.table)

    def _pieces(self, text: str):
        """``(is_kept_whole, piece, offset)``: the special tokens and never_split words, and the text between."""
        patterns = [_SPECIAL_SPLIT] + ([self._never] if self._never is not None else [])
        pos = 0
        while True:
            found = [m for m in (p.search(text, pos) for p in patterns) if m is not None]
            if not found:
                break
            m = min(found, key=lambda m: m.start())
            if m.start() > pos:
                yield False, text[pos:m.start()], pos
            yield True, m.group(), m.start()
            pos = m.end()
        if pos < len(text):
            yield False, text[pos:], pos

    def words(self, text: str) -> list[str]:
        """Split ``text`` into normalised words and single punctuation characters."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if "[" not in text and self._never is None:
            return self.spaced(text).split() if self.clean_text else _split_spaces(self.spaced(text))
        words: list[str] = []
        for whole, piece, _ in self._pieces(text):
            if whole:
                words.append(piece)
            else:
                words.extend(_split_spaces(self.spaced(piece)))
        return words

    def words_with_offsets(self, text: str) -> list[tuple[str, list[int]]]:
        """Like :meth:`words`, with each word's origin: ``(word, origin)`` where ``origin[k]`` is the
        index in ``text`` of the character that became the word's ``k``-th character.

        A word's span in ``text`` is ``(origin[0], origin[-1] + 1)``; a piece ``word[a:b]`` came
        from ``text[origin[a] : origin[b - 1] + 1]``. Lower-casing and accent stripping may change
        the number of characters (``é`` -> ``e``, ``İ`` -> ``i̇``): each normalised character
        points back to the one it came from.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        out: list[tuple[str, list[int]]] = []
        table = self.table
        for whole, piece, start in self._pieces(text):
            if whole:
                out.append((piece, list(range(start, start + len(piece)))))
                continue
            normalized = piece.translate(table)
            # normalised position p comes from piece character owner[p]: repeat i len(table[i]) times
            # normalised position p comes from text[owner[p]]: index i repeated len(table[c_i]) times
            lengths = map(len, map(table.__getitem__, map(ord, piece)))
            owner = list(chain.from_iterable(map(repeat, range(start, start + len(piece)), lengths)))
            out.extend((m.group(), owner[m.start():m.end()]) for m in _WORD.finditer(normalized))
        return out


def _split_spaces(s: str) -> list[str]:
    return [w for w in s.split(" ") if w]


def basic_tokenize(text: str, do_lower_case: bool = True) -> list[str]:
    """Split ``text`` into normalised words and single punctuation characters (BERT's defaults).

    Special tokens written in the text (``SPECIAL_TOKENS``) are kept whole. See :class:`Normalizer`
    for the options (``strip_accents``, ``tokenize_chinese_chars``, ``never_split`` ...).
    """
    return _default_normalizer(bool(do_lower_case)).words(text)


@lru_cache(maxsize=2)
def _default_normalizer(lowercase: bool) -> Normalizer:
    return Normalizer(lowercase)
