"""How the count vectors are counted: ``pretrain --count-window N`` and ``--count-upweight SOURCE=K``.

- counting a subset's pairs K times gives the vectors of a corpus where that subset is written K times (and not
  those of the corpus as it is: the planted case of a weight that is ignored);
- the job upweights the training documents of the part named, never a held-out one, and counts within the window
  asked;
- bad values get one line naming the problem, before any work.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from bert_from_scratch.training import count_vectors as cv


def test_pairs_counted_k_times_are_the_text_written_k_times():
    rng = np.random.default_rng(0)
    sentences = [rng.integers(0, 60, size=rng.integers(3, 15)) for _ in range(400)]
    subset = sentences[:50]
    weighted = cv.count_vectors(sentences, 60, 8, window=3, upweighted=subset, weight=4.0)
    repeated = cv.count_vectors(sentences + 3 * subset, 60, 8, window=3)
    np.testing.assert_allclose(np.abs(weighted), np.abs(repeated), rtol=1e-4, atol=1e-6)   # signs may flip
    plain = cv.count_vectors(sentences, 60, 8, window=3)
    assert not np.allclose(np.abs(weighted), np.abs(plain), rtol=1e-2, atol=1e-3)        # the weight shows
    np.testing.assert_allclose(cv.count_vectors(sentences, 60, 8, window=3, upweighted=subset, weight=1.0), plain)


@pytest.mark.parametrize("spec, parsed", [("rt-train=10", ("rt-train", 10.0)), ("a/b.txt=2.5", ("a/b.txt", 2.5))])
def test_upweight_specs_parse(spec, parsed):
    assert cv.parse_upweight(spec) == parsed


@pytest.mark.parametrize("spec", ["rt-train", "=3", "rt-train=0.5", "rt-train=x", "rt-train=nan", "rt-train=1e9"])
def test_bad_upweight_specs_are_refused_in_one_line(spec):
    with pytest.raises(ValueError, match="--count-upweight takes SOURCE=K") as e:
        cv.parse_upweight(spec)
    assert "\n" not in str(e.value)


def two_part_corpus(tmp_path):
    """Two text files of 8 documents each; B's words are its own, so its weight moves the vectors."""
    parts = []
    for name, word in (("a.txt", "apple"), ("b.txt", "bread")):
        path = tmp_path / name
        path.write_text("\n\n".join(" ".join(f"{word}{(d * 5 + i) % 30} and common{(d + i) % 7} here."
                                              for i in range(10)) for d in range(8)))
        parts.append(str(path))
    return "+".join(parts), parts


def test_the_job_counts_the_named_parts_training_documents_k_times(tmp_path):
    from bert_from_scratch.data.corpora import load_documents
    from bert_from_scratch.data.pretraining import tokenize_documents
    from bert_from_scratch.training.pretrain_job import prepare_pretraining_data

    corpus, (_, b) = two_part_corpus(tmp_path)
    logged = []
    kw = dict(corpus=corpus, vocab_size=150, max_seq_length=32, dupe_factor=1, seed=0, count_vectors_dim=8)
    data = prepare_pretraining_data(**kw, log=logged.append, count_window=3, count_upweight=f"{b}=5")
    assert any("window 3" in m and "counted 5 times" in m for m in logged)
    tok = data.tokenizer

    def ids(docs):
        return [np.asarray(tok.convert_tokens_to_ids(s)) for d in tokenize_documents(docs, tok) for s in d]

    docs = load_documents(corpus)
    order = list(range(len(docs)))
    random.Random(0).shuffle(order)                               # the job's seeded split: 5% of 16 is 1 held out
    train = [docs[i] for i in order[1:]]
    in_b = {d.text for d in load_documents(b)}
    assert docs[order[0]].text in in_b                            # the held-out document is one of B's

    def expected(up):
        return cv.initial_word_embeddings(cv.count_vectors(ids(train), len(tok), 8, 3, ids(up), 5.0), 0.02)

    np.testing.assert_allclose(data.word_vectors, expected([d for d in train if d.text in in_b]), atol=1e-6)
    every_b = [d for d in docs if d.text in in_b]                 # B's held-out document would show
    assert not np.allclose(data.word_vectors, expected(every_b), atol=1e-4)
    plain = prepare_pretraining_data(**kw, log=lambda m: None, count_window=3).word_vectors
    assert not np.allclose(np.abs(data.word_vectors), np.abs(plain), atol=1e-4)    # the weight is not ignored
    wide = prepare_pretraining_data(**kw, log=lambda m: None, count_window=8).word_vectors
    assert not np.allclose(np.abs(wide), np.abs(plain), atol=1e-4)                 # nor is the window


def test_the_report_records_the_recipe_and_bad_values_are_refused(tmp_path):
    from bert_from_scratch.training.pretrain_job import run_pretraining

    corpus, (a, _) = two_part_corpus(tmp_path)
    report = run_pretraining(corpus=corpus, out=tmp_path / "run", steps=1, warmup=1, batch_size=4, vocab_size=150,
                             size="tiny", layers=1, hidden=16, heads=2, intermediate=32, log=lambda m: None,
                             progress=False, backend="numpy", count_window=7, count_upweight=f"{a}=2")[1]
    assert report["count_vectors"] == {"window": 7, "upweight": f"{a}=2"}
    elsewhere = run_pretraining(corpus=a, out=tmp_path / "one-part", steps=1, warmup=1, batch_size=4, vocab_size=150,
                                size="tiny", layers=1, hidden=16, heads=2, intermediate=32, log=lambda m: None,
                                progress=False, backend="numpy", count_upweight="rt-train=10")[1]
    assert elsewhere["count_vectors"] == {"window": 20, "upweight": None}   # not a part of the corpus: nothing
    with pytest.raises(ValueError, match="count_window must be a whole number"):
        run_pretraining(count_window=0)
    with pytest.raises(ValueError, match="--count-upweight takes SOURCE=K"):
        run_pretraining(count_upweight="rt-train")


def test_the_main_job_and_the_long_frozen_run_upweight_the_reviews_where_the_corpus_has_them(tmp_path, capsys):
    from bert_from_scratch.cli import build_parser, main
    from bert_from_scratch.training.presets import resolve_preset

    def resolved(*argv):
        args = build_parser().parse_args(["pretrain", *argv])
        return {k: vars(resolve_preset(args, args.preset))[k] for k in ("count_window", "count_upweight")}

    main_job = {"count_window": 20, "count_upweight": "rt-train=10"}           # since 2026-12-05, night
    assert resolved() == main_job and resolved("--preset", "long-frozen") == main_job
    assert resolved("--count-window", "5", "--count-upweight", "none") == {"count_window": 5, "count_upweight": "none"}
    corpus, (a, _) = two_part_corpus(tmp_path)                # a corpus without rt-train: the default upweights nothing
    common = ["pretrain", "--steps", "1", "--batch-size", "4", "--seq-len", "32", "--vocab-size", "150", "--layers",
              "1", "--hidden", "16", "--heads", "2", "--intermediate", "32", "--no-progress", "--backend", "numpy"]
    assert main(common + ["--corpus", a, "--out", str(tmp_path / "default")]) == 0
    assert main(common + ["--corpus", corpus, "--count-upweight", "none", "--out", str(tmp_path / "none")]) == 0
    assert main(common + ["--corpus", corpus, "--count-upweight", f"{a}=3", "--out", str(tmp_path / "a3")]) == 0
    import json
    recorded = {run: json.loads((tmp_path / run / "results.json").read_text())["count_vectors"]
                for run in ("default", "none", "a3")}
    assert recorded == {"default": {"window": 20, "upweight": None}, "none": {"window": 20, "upweight": None},
                        "a3": {"window": 20, "upweight": f"{a}=3"}}
    capsys.readouterr()
    assert main(common + ["--corpus", a, "--count-upweight", "rt-train=10", "--out", str(tmp_path / "x")]) == 2
    assert "--count-upweight rt-train: not a part of --corpus" in capsys.readouterr().err
