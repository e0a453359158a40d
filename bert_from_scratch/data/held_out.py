"""Held-out text never reaches pretraining: the dev and test text of the project's own tasks, and the check.

Three named pretraining corpora share their text with a fine-tuning task:

==========  ==============================  ==================================================================
part        task                            what pretraining reads
==========  ==============================  ==================================================================
rt-train    Rotten Tomatoes sentiment       the training split's reviews and the plot summaries
                                            (``domain_corpora.py``)
bbc         BBC News topics                 the training split's articles: the dev and test articles (and
                                            their exact repeats) are left out, 1,775 of 2,225 files remain
brown       Brown part-of-speech tagging    the split's 400 training documents: its 50 dev and 50 test
                                            documents are left out
==========  ==============================  ==================================================================

Each split is the task's own seeded split with :data:`SPLIT_SEED` (0), the default of ``finetune --split-seed``:
a checkpoint pretrained on these parts, fine-tuned with another split seed, may meet dev or test text it read in
pretraining, and ``finetune`` says so (:func:`split_seed_warning`).

**The check** (:func:`find_leaks`): text is compared after :func:`normalise` (lower case, runs of whitespace made
one space). A held-out text is found when it is a whole document, paragraph or sentence of the corpus or, with
``substring=True`` and 8 words or more, anywhere inside its text. The held-out texts of a task are its dev and test
texts that are not also training texts: a sentence such as ``(a)`` or ``Sec. 5.`` that stands in a held-out Brown
document and in a training one is the task's training text as well. Each part is checked every time it is loaded
(:func:`check_no_leak` raises ``CorpusError``), and the tests show the check finds a planted held-out text.
"""
from __future__ import annotations

import warnings

from .corpora import CorpusError, Document

#: the task split whose dev and test text the named pretraining corpora leave out
SPLIT_SEED = 0
#: held-out texts at least this long are also searched for inside longer text (shorter ones, e.g. "a great movie",
#: occur inside other text by chance: only whole documents, paragraphs and sentences count for them)
MIN_WORDS_FOR_SUBSTRING = 8
#: :func:`find_leaks` looks up words 2 to 1 + KEY_WORDS of a long held-out text among the corpus's words first (at
#: most ``MIN_WORDS_FOR_SUBSTRING - 2``: the words of a text found inside other text that are whole words there)
KEY_WORDS = 6


def normalise(text: str) -> str:
    """Lower case, whitespace runs made one space: the form the leak check compares."""
    return " ".join(text.lower().split())


def find_leaks(documents: list[Document], texts: list[str], substring: bool = True) -> list[str]:
    """The ``texts`` found in ``documents`` (see the module docstring), in the order given.

    The search inside the text reads the corpus once for all texts. A normalised text of ``n`` >= 8 words found
    inside normalised text has a space on each side of its words 2 to ``n - 1``, so those are whole words there,
    one after the other: its words 2-7 are six consecutive words of the corpus. One pass over the corpus's words
    collects which texts' six words occur, and only those texts are searched for in the text: the same answer as
    searching for every one, much sooner (the 2,132 Rotten Tomatoes dev and test texts in the 5.7M-word IMDb
    corpus on the 2-vCPU VM: 2.0 s, where searching for them one by one took 19-33 s)."""
    units: set[str] = set()
    normalised_docs = [normalise(d.text) for d in documents]
    for d, text in zip(documents, normalised_docs):
        units.add(text)
        units.update(normalise(p) for p in d.text.split("\n"))
        units.update(normalise(s) for s in d.sentences)
    normalised_texts = [normalise(text) for text in texts]
    wanted = {}                                           # long text -> its words 2-7
    for t in normalised_texts if substring else ():
        words = t.split()
        if len(words) >= MIN_WORDS_FOR_SUBSTRING and t not in units:
            wanted[t] = tuple(words[1:1 + KEY_WORDS])
    keys = set(wanted.values())
    present = set()
    for text in normalised_docs if keys else ():
        words = text.split()
        present.update(gram for gram in zip(*(words[i:] for i in range(KEY_WORDS))) if gram in keys)
    corpus = "\n".join(normalised_docs) if present else ""
    return [text for text, t in zip(texts, normalised_texts)
            if t and (t in units or (t in wanted and wanted[t] in present and t in corpus))]


def without_leaks(documents: list[Document], texts: list[str]) -> list[Document]:
    """``documents`` less those that hold one of ``texts`` by :func:`find_leaks`'s rule (whole document, paragraph or
    sentence; inside the text for texts of ``MIN_WORDS_FOR_SUBSTRING`` words or more)."""
    leaked = find_leaks(documents, texts)
    if not leaked:
        return documents
    normalised = [normalise(t) for t in leaked]
    kept = []
    for d in documents:
        text = normalise(d.text)
        if not (any(t in text for t in normalised) and find_leaks([d], leaked)):   # a substring first: fast
            kept.append(d)
    return kept


def check_no_leak(documents: list[Document], texts: list[str], task: str, substring: bool = True) -> None:
    """Raise ``CorpusError`` naming the first leaked text when any of ``texts`` (``task``'s held-out) is found."""
    leaks = find_leaks(documents, texts, substring)
    if leaks:
        raise CorpusError(f"{len(leaks)} dev/test text(s) of {task} found in the pretraining corpus, e.g. "
                          f"{leaks[0][:80]!r}: pretraining must never see held-out text")


def classification_held_out(data) -> list[str]:
    """The dev and test texts (and second texts of pairs) of a ``labeled.ClassificationData``."""
    return [t for e in data.dev + data.test for t in (e.text, e.text_b) if t]


# ---- the BBC News topics task ------------------------------------------------------------------------------------
def bbc_training_documents() -> list[Document]:
    """The ``bbc`` pretraining corpus: every article that is not a dev or test article of the topics task."""
    from .corpora import load_bbc
    from .labeled import load_classification     # imported here: labeled.py builds on corpora.py, which imports us

    held_out = classification_held_out(load_classification("bbc", seed=SPLIT_SEED))
    dropped = {normalise(t) for t in held_out}
    docs = [d for d in load_bbc() if normalise(d.text) not in dropped]
    check_no_leak(docs, held_out, "BBC News topics")
    return docs


# ---- Brown part-of-speech tagging --------------------------------------------------------------------------------
def brown_held_out() -> list[str]:
    """The sentences of the tagging split's dev and test documents that no training document also holds, as the
    ``brown`` corpus writes sentences (tags stripped, ``prose_corpora.detokenize``)."""
    from .brown import read_brown, split_documents
    from .prose_corpora import detokenize

    docs = read_brown()
    train, dev, test = split_documents(docs, SPLIT_SEED)
    seen = {normalise(detokenize(s.words)) for name in train for s in docs[name]}
    return [text for name in dev + test for text in (detokenize(s.words) for s in docs[name])
            if text.strip() and normalise(text) not in seen]


def brown_training_names() -> list[str]:
    """The file names (``ca01`` ...) of the tagging split's training documents, sorted."""
    from .brown import read_brown, split_documents

    return sorted(split_documents(read_brown(), SPLIT_SEED)[0])


def check_brown(documents: list[Document]) -> None:
    """Refuse ``documents`` that hold a sentence of the tagging task's dev or test documents.

    Whole sentences only: the ``brown`` corpus is made of the corpus's sentences, one per line."""
    check_no_leak(documents, brown_held_out(), "Brown part-of-speech tagging", substring=False)


# ---- fine-tuning with another split --------------------------------------------------------------------------------
#: the task (``--dataset`` name, or "brown_pos") -> the named pretraining corpus part built from its training split
TASK_CORPUS = {"rotten_tomatoes": "rt-train", "bbc": "bbc", "brown_pos": "brown"}


def split_seed_warning(dataset: str, split_seed: int, init) -> str | None:
    """The one-line warning :func:`warn_on_another_split` gives when a pretrained checkpoint is fine-tuned on a split
    other than :data:`SPLIT_SEED`.

    ``init`` is ``finetune --init``: "random" and "minilm" read none of the project's corpora, so they get None."""
    if split_seed == SPLIT_SEED or str(init) in ("random", "minilm") or dataset not in TASK_CORPUS:
        return None
    return (f"--split-seed {split_seed}: the pretraining corpus part {TASK_CORPUS[dataset]!r} leaves out "
            f"the dev/test text of split seed {SPLIT_SEED} only, so this split's dev/test text may have been "
            f"pretrained on (if {init} read that part)")


def warn_on_another_split(dataset: str, split_seed: int, init) -> None:
    """``warnings.warn`` :func:`split_seed_warning`'s message, if any (the CLI shows a warning as one line)."""
    message = split_seed_warning(dataset, split_seed, init)
    if message:
        warnings.warn(message, stacklevel=2)
