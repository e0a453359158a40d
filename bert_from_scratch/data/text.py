"""Stage 1 of BERT's tokenization, the basic tokenizer: clean, normalise and split text into words.

The steps are those of google-research/bert's ``BasicTokenizer`` and Hugging Face's
``BertNormalizer`` + ``BertPreTokenizer``, listed in order in ``tokenizer.py``'s docstring. Here:

- the character classes: :func:`is_whitespace`, :func:`is_control`, :func:`is_punctuation`,
  :func:`is_cjk`;
- three ``str.translate`` tables, each filled lazily one code point at a time, so that the
  per-character work runs in C: ``_CLEAN`` (drop control characters, any whitespace becomes a
  space, CJK ideographs are spaced out), ``_SPLIT`` (punctuation is spaced out) and, for
  uncased models on NFD text, ``_UNCASE_SPLIT`` (drop ``Mn`` marks, lowercase, space out
  punctuation);
- :func:`normalize_and_space` applies them; :func:`basic_tokenize` keeps special tokens written
  in the text whole and splits the rest on whitespace.

The tokenizer (``tokenizer.py``) and the vocabulary trainer (``wordpiece_trainer.py``) both
split text with :func:`basic_tokenize`.
"""
from __future__ import annotations

import re
import unicodedata

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONTINUATION = "##"         # WordPiece's prefix of every piece that continues a word

# special tokens written in the input text are kept whole, as Hugging Face does
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


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


# ----------------------------------------------------------------------------------------------
# str.translate tables

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
# text -> words

def normalize_and_space(text: str, do_lower_case: bool = True) -> str:
    """Clean + CJK, then (uncased) NFD, drop ``Mn``, lowercase; punctuation spaced out.

    The result split on whitespace is the list of words (special tokens are not treated apart
    here: :func:`basic_tokenize` does that).
    """
    text = text.translate(_CLEAN)
    if not do_lower_case:
        return text.translate(_SPLIT)
    if text.isascii():
        return text.lower().translate(_SPLIT)
    # Whole-string NFD first (so combining marks come in canonical order), then drop the
    # Mn marks and lowercase character by character, as HF's BertNormalizer does.
    return unicodedata.normalize("NFD", text).translate(_UNCASE_SPLIT)


def basic_tokenize(text: str, do_lower_case: bool = True) -> list[str]:
    """Split ``text`` into normalised words and single punctuation characters.

    Special tokens written in the text (``SPECIAL_TOKENS``) are kept whole; every other part
    goes through :func:`normalize_and_space` and ``str.split()`` on whitespace.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    words: list[str] = []
    for i, part in enumerate(_SPECIAL_SPLIT.split(text) if "[" in text else (text,)):
        if i % 2 == 1:                      # a special token written in the text
            words.append(part)
        elif part:
            words.extend(normalize_and_space(part, do_lower_case).split())
    return words
