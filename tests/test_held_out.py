"""No dev or test text of the BBC topics and Brown tagging tasks reaches pretraining (``data/held_out.py``).

The Rotten Tomatoes part (``rt-train``) has its own tests in ``test_transfer.py``; the check is the same function.
Each check is shown to find a planted held-out text.
"""
import argparse
import warnings

import pytest

from bert_from_scratch.cli.finetune import _load_data
from bert_from_scratch.data import corpora, held_out
from bert_from_scratch.data.brown import load_brown_pos
from bert_from_scratch.data.corpora import CorpusError, _make_document, load_documents
from bert_from_scratch.data.held_out import (check_no_leak, classification_held_out, find_leaks, normalise,
                                             split_seed_warning)
from bert_from_scratch.data.labeled import load_classification
from bert_from_scratch.data.prose_corpora import brown_document


@pytest.fixture(scope="module")
def bbc():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # the one Latin-1 file
        return load_classification("bbc", seed=0), load_documents("bbc"), corpora.load_bbc()


def test_the_bbc_corpus_is_the_topic_tasks_training_articles(bbc):
    data, docs, every = bbc
    texts = {normalise(d.text) for d in docs}
    held = {normalise(e.text) for e in data.dev + data.test}
    assert not texts & held
    # the training split, all of it but one article that a dev or test article repeats (up to case and spacing)
    train = {normalise(e.text) for e in data.train}
    assert texts == train - held and len(train & held) == 1
    assert len(every) == 2225 and len(docs) == 1775 and find_leaks(docs, classification_held_out(data)) == []


def test_a_planted_bbc_dev_article_is_refused(bbc, monkeypatch):
    data, _, every = bbc
    article = data.dev[5].text
    monkeypatch.setattr(held_out, "bbc_training_documents", _without_the_filter(every))
    with pytest.raises(CorpusError, match="dev/test text.* of BBC News topics"):
        load_documents("bbc")
    # and inside a longer text, with other case and spacing
    doc = _make_document("A preamble.\n\n" + article.upper().replace(" ", "  ") + "\n\nAfterwards.", None, "x")
    assert find_leaks([doc], classification_held_out(data)) == [article]


def _without_the_filter(every):
    """``bbc_training_documents`` with a bug planted: it forgets to leave out the held-out articles."""
    def planted():
        data = load_classification("bbc", seed=held_out.SPLIT_SEED)
        check_no_leak(every, classification_held_out(data), "BBC News topics")
        return every
    return planted


def test_the_brown_corpus_is_the_tagging_tasks_training_documents():
    docs = load_documents("brown")
    pos = load_brown_pos(seed=0)
    names = {d.doc_id.removeprefix("brown/") for d in docs}
    assert names == set(pos.documents["train"]) and len(names) == 400
    assert not names & set(pos.documents["dev"] + pos.documents["test"])
    assert sum(len(d.sentences) for d in docs) == len(pos.train) == 45689
    held = held_out.brown_held_out()
    assert 10_000 < len(held) < len(pos.dev) + len(pos.test)             # a few short lines are training text too
    assert "(a)" not in held and find_leaks(docs, held, substring=False) == []


def test_a_planted_brown_test_document_is_refused(monkeypatch):
    pos = load_brown_pos(seed=0)
    planted = pos.documents["train"][:5] + pos.documents["test"][:1]     # the bug: a test file among them
    monkeypatch.setattr(held_out, "brown_training_names", lambda: sorted(planted))
    with pytest.raises(CorpusError, match="dev/test text.* of Brown part-of-speech tagging"):
        load_documents("brown")
    # one test sentence inside a training document is found too
    from bert_from_scratch.data.brown import read_brown
    brown = read_brown()
    doc = brown_document(pos.documents["train"][0], brown[pos.documents["train"][0]])
    sentence = next(s for s in held_out.brown_held_out() if len(s.split()) > 5)
    doc.sentences.append(sentence)
    with pytest.raises(CorpusError, match="1 dev/test text"):
        held_out.check_brown([doc])


def test_fine_tuning_a_checkpoint_on_another_split_warns(tmp_path):
    assert split_seed_warning("bbc", 0, tmp_path) is None
    assert split_seed_warning("rotten_tomatoes", 1, "random") is None and split_seed_warning("bbc", 1, "minilm") is None
    message = split_seed_warning("brown_pos", 3, tmp_path)
    assert "--split-seed 3" in message and "'brown'" in message and "\n" not in message
    args = argparse.Namespace(train=None, dev=None, test=None, dataset="rotten_tomatoes", split_seed=1,
                              init=str(tmp_path))
    with pytest.warns(UserWarning) as caught:
        assert len(_load_data(args).test) == 1276
    assert len(caught) == 1
    text = str(caught[0].message)
    assert text.startswith("--split-seed 1") and "'rt-train'" in text and "\n" not in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # split 0 warns nothing
        _load_data(argparse.Namespace(**{**vars(args), "split_seed": 0}))


def _search_every_text(documents, texts):
    """find_leaks's rule written plainly: every long text searched for in the whole normalised corpus."""
    units = {normalise(u) for d in documents for u in [d.text, *d.text.split("\n"), *d.sentences]}
    corpus = "\n".join(normalise(d.text) for d in documents)
    return [x for x in texts if (t := normalise(x)) and
            (t in units or (len(t.split()) >= held_out.MIN_WORDS_FOR_SUBSTRING and t in corpus))]


def test_the_search_inside_text_finds_what_searching_for_every_text_finds(monkeypatch):
    """Held-out texts planted at random places (inside words too, across a paragraph break, in other case and
    spacing), and texts that are not there: find_leaks finds exactly what the plain search finds. Looking up a word
    that may be cut (words 2-8 of an 8-word text: its last one) is caught."""
    import random
    rng = random.Random(0)
    words = "the a film story plot cast scene end good bad slow quiet loud fun dark long short odd".split()
    sentence = lambda n: " ".join(rng.choice(words) for _ in range(n))                     # noqa: E731
    texts = [sentence(rng.randrange(3, 14)) for _ in range(120)]
    docs = []
    for i in range(60):
        body = [sentence(rng.randrange(5, 30)) for _ in range(3)]
        if i % 2:                                      # a planted text: glued into a word, spaced, capitalised
            text = rng.choice(texts)
            cut = rng.randrange(len(body[1]) + 1)
            planted = text.upper().replace(" ", rng.choice([" ", "  ", "\t", "\n"]))
            body[1] = body[1][:cut] + rng.choice(["", " ", "x"]) + planted + rng.choice(["", " ", "y"]) + body[1][cut:]
        text = "\n".join(body)
        docs.append(_make_document(text, None, f"t/{i}"))
    glued = "a film story plot cast scene end good"                                         # 8 words
    docs.append(_make_document("one two " + glued + "ness three", None, "t/glued"))      # its last word cut
    texts.append(glued)
    expected = _search_every_text(docs, texts)
    assert glued in expected and 10 < len(expected) < len(texts)
    assert find_leaks(docs, texts) == expected
    monkeypatch.setattr(held_out, "KEY_WORDS", held_out.MIN_WORDS_FOR_SUBSTRING - 1)     # planted: words 2-8
    assert glued not in find_leaks(docs, texts)
