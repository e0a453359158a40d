"""Corpora (BBC, Python docs, user text) and the classification datasets and CSV reader."""
from __future__ import annotations

import collections
import re
import warnings

import pytest

from bert_from_scratch.data.corpora import BBC_TOPICS, CorpusError, load_bbc, load_documents, split_sentences
from bert_from_scratch.data.labeled import Example, load_classification, read_classification_csv, split_examples


def test_sentence_splitter():
    assert split_sentences("Mr. Smith went to Washington. He met the U.S. president! Then? 3 left.") == [
        "Mr. Smith went to Washington.", "He met the U.S. president!", "Then?", "3 left."]
    # initials, decimals, quotes, lowercase continuation: no split
    assert split_sentences('J. K. Rowling earned $1.5bn. "It is fine," she said. it goes on.') == [
        "J. K. Rowling earned $1.5bn.", '"It is fine," she said. it goes on.']
    # a closing quote stays with its sentence; blank lines separate paragraphs; wrapped lines join
    assert split_sentences('He said "Go." Then left\nthe room.\n\nNew paragraph') == [
        'He said "Go."', "Then left the room.", "New paragraph"]
    assert split_sentences("Title\n=====\n\nBody text.") == ["Title", "Body text."]
    assert split_sentences("  \n\n ") == []


def test_bbc_corpus():
    with pytest.warns(UserWarning, match="sports/199.txt is not valid UTF-8"):
        docs = load_documents("bbc")
    # 1,775 of the 2,225 articles: the topic task's dev and test articles are left out (held_out.py)
    assert len(docs) == 1775 and len(load_bbc()) == 2225
    counts = collections.Counter(d.label for d in docs)
    assert counts == {"business": 408, "entertainment": 308, "politics": 332, "sports": 409, "tech": 318}
    words = sum(len(d.text.split()) for d in docs)
    assert 670_000 < words < 690_000                              # ~682k words (~855k in all 2,225)
    first = docs[0]
    assert first.doc_id == "bbc/business/001"
    assert first.sentences[0] == "Ad sales boost Time Warner profit"    # the title is sentence 1
    assert first.sentences[1].startswith("Quarterly profits at US media giant TimeWarner jumped 76%")
    assert 30_000 < sum(len(d.sentences) for d in docs) < 40_000
    latin1 = next(d for d in docs if d.doc_id == "bbc/sports/199")
    assert "£15.8m" in latin1.text                                 # decoded as Latin-1, not dropped


def test_python_docs_corpus():
    docs = load_documents("python-docs")
    assert len(docs) == 79 and all(d.label is None for d in docs)
    assert docs[0].doc_id == "python-docs/assert" and docs[0].sentences[0] == 'The "assert" statement'
    assert not any(re.fullmatch(r"[*=\-~^#\s]+", s) for d in docs for s in d.sentences)  # underlines dropped


def test_user_text_folder_and_file(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("First doc. It has two sentences.\n")
    (folder / "sub" / "b.txt").write_text("Second doc here.")
    (folder / "ignored.md").write_text("Not text.")
    (folder / "c.txt").write_bytes("Caf\xe9 au lait.".encode("latin-1"))
    with pytest.warns(UserWarning, match="not valid UTF-8"):
        docs = load_documents(folder)
    assert [d.doc_id for d in docs] == ["a.txt", "c.txt", "sub/b.txt"]
    assert docs[0].sentences == ["First doc.", "It has two sentences."]
    assert docs[1].text == "Café au lait."

    single = tmp_path / "corpus.txt"
    single.write_text("Doc one line one.\nDoc one line two\n\n\nDoc two. Two sentences.\n")
    docs = load_documents(str(single))
    assert len(docs) == 2
    assert docs[0].sentences == ["Doc one line one.", "Doc one line two"]   # line breaks are boundaries
    assert docs[1].sentences == ["Doc two.", "Two sentences."]


def test_corpus_errors(tmp_path):
    with pytest.raises(CorpusError, match="no such file or folder"):
        load_documents(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no .txt files"):
        load_documents(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    with pytest.raises(CorpusError, match="empty"):
        load_documents(tmp_path / "blank.txt")
    assert issubclass(CorpusError, ValueError)


# -- classification ---------------------------------------------------------------------------

def _check_split(data, sizes, label_names):
    assert (len(data.train), len(data.dev), len(data.test)) == sizes
    assert data.label_names == label_names
    texts = [{e.text for e in part} for part in (data.train, data.dev, data.test)]
    assert sum(map(len, texts)) == sum(sizes)                     # no duplicates inside a split
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])   # no overlap
    everything = data.train + data.dev + data.test
    assert all(e.text_b is None and 0 <= e.label < len(label_names) for e in everything)
    # stratified: each label's share in each split within 1% of its overall share
    overall = collections.Counter(e.label for e in everything)
    for part in (data.train, data.dev, data.test):
        share = collections.Counter(e.label for e in part)
        for label, n in overall.items():
            assert abs(share[label] / len(part) - n / len(everything)) < 0.01


def test_rotten_tomatoes_split():
    data = load_classification("rotten_tomatoes")
    _check_split(data, (10201, 1275, 1276), ["negative", "positive"])
    labels = collections.Counter(e.label for e in data.train + data.dev + data.test)
    assert labels == {1: 7368, 0: 5384}            # 7,403 fresh / 5,405 rotten less 56 exact repeats
    again = load_classification("rotten_tomatoes", seed=0)
    assert [e.text for e in again.test] == [e.text for e in data.test]     # deterministic
    other = load_classification("rotten_tomatoes", seed=1)
    assert [e.text for e in other.test] != [e.text for e in data.test]


def test_bbc_classification_split():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_classification("bbc")
    _check_split(data, (1701, 212, 214), list(BBC_TOPICS))
    assert data.num_labels == 5
    with pytest.raises(ValueError, match="unknown classification dataset"):
        load_classification("imdb")


def test_split_check_rejects_a_leaky_split():
    examples = [Example(f"text {i}", i % 2) for i in range(100)]
    data = split_examples(examples, ["a", "b"], seed=3)
    _check_split(data, (80, 10, 10), ["a", "b"])
    data.test = data.test[:-1] + [data.train[0]]                  # plant a train example in test
    with pytest.raises(AssertionError):
        _check_split(data, (80, 10, 10), ["a", "b"])


# -- user CSVs ------------------------------------------------------------------------------------

def test_read_csv(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text('text,label\n"Great, really great",pos\nAwful,neg\n\nfine,pos\n')
    data = read_classification_csv(f)
    assert data.label_names == ["neg", "pos"]
    assert [(e.text, e.label) for e in data.examples] == [("Great, really great", 1), ("Awful", 0), ("fine", 1)]
    data = read_classification_csv(f, label_names=["pos", "neg"])
    assert [e.label for e in data.examples] == [0, 1, 0]
    g = tmp_path / "pairs.csv"
    g.write_text("text,text_b,label\nA man sleeps,A person rests,2\nA dog,A cat,0\n")
    data = read_classification_csv(g)
    assert data.label_names == ["0", "2"] and data.examples[0].label == 1    # the labels observed, not range(3)
    assert data.examples[0].text_b == "A person rests"


@pytest.mark.parametrize("content, label_names, message", [
    ("", None, "the file is empty"),
    ("text,label\n", None, "a header but no examples"),
    ("sentence,label\nhi,1\n", None, "line 1: missing column 'text'"),
    ("text,category\nhi,1\n", None, "line 1: missing column 'label'"),
    ("text,label\nhi,1\n  ,0\n", None, "line 3: empty text"),
    ("text,label\nhi,pos\nho,maybe\n", ["neg", "pos"], "line 3: label 'maybe' is not one of"),
    ("text,label\nhi,pos,extra\n", None, "line 2: 3 fields"),
])
def test_read_csv_errors(tmp_path, content, label_names, message):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        read_classification_csv(f, label_names=label_names)
    assert "bad.csv" in str(info.value)


def test_read_csv_missing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_classification_csv(tmp_path / "missing.csv")
