"""The ``imdb`` pretraining corpus: IMDb reviews only, paragraphs at ``<br />``, never a dev or test review of the
Rotten Tomatoes task (the reviews that hold one are left out, and the final check refuses a corpus with one)."""
import pytest

from bert_from_scratch.data import domain_corpora
from bert_from_scratch.data.corpora import CorpusError, load_documents
from bert_from_scratch.data.held_out import classification_held_out, find_leaks, normalise
from bert_from_scratch.data.labeled import ClassificationData, Example, load_classification

DEV = "A great movie."                   # a short held-out review: it counts as a whole paragraph or sentence only
TEST = "the plot holds together until the last reel, where it falls apart for good"   # 15 words: inside text too
TASK = ClassificationData([Example("kept for training", 1)], [Example(DEV, 1)], [Example(TEST, 0)], ["neg", "pos"])
ROWS = [
    {"source": "imdb", "label": "1", "text": "First paragraph. It is a great movie to me.<br /><br />Second one."},
    {"source": "imdb", "label": "0", "text": "Dull.<br /><br />A great movie. Not."},                 # DEV as a sentence
    {"source": "imdb", "label": "0", "text": "Yes, " + TEST.upper() + ", sadly."},                  # TEST inside
    {"source": "imdb", "label": "1", "text": "First paragraph. It is a great movie to me.<br /><br />Second one."},
    {"source": "rotten_tomatoes", "label": "1", "text": "A snippet of the task's own source."},
    {"source": "imdb", "label": "1", "text": " <br />  "},
]


def test_imdb_reviews_only_split_at_breaks_and_the_leaky_ones_left_out():
    docs = domain_corpora.imdb_documents(data=TASK, rows=ROWS)
    assert [d.text for d in docs] == ["First paragraph. It is a great movie to me.\n\nSecond one."]   # once
    assert docs[0].sentences == ["First paragraph.", "It is a great movie to me.", "Second one."]
    assert docs[0].doc_id == "imdb/0" and docs[0].label is None


def test_the_final_check_refuses_what_a_broken_filter_lets_through(monkeypatch):
    monkeypatch.setattr(domain_corpora, "without_leaks", lambda docs, texts: docs)     # a planted bug: no filter
    with pytest.raises(CorpusError, match="dev/test text"):
        domain_corpora.imdb_documents(data=TASK, rows=ROWS)


def test_the_imdb_corpus_loads_without_held_out_text():
    docs = load_documents("imdb")
    n_words = sum(len(d.text.split()) for d in docs)
    assert 24_500 < len(docs) <= 25_000 and 5.5e6 < n_words < 6.0e6
    assert all(d.doc_id.startswith("imdb/") and "<br" not in d.text.lower() for d in docs)
    data = load_classification("rotten_tomatoes", seed=0)
    assert find_leaks(docs, classification_held_out(data)) == []
    assert "terrible." not in {normalise(s) for d in docs for s in d.sentences}      # the one leak the wheel holds
