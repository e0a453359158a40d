"""Count-based word-piece vectors (training/count_vectors.py), the probe's "what the text alone holds" row.

- the co-occurrence counts equal a hand count (1/distance, both directions, within a sentence), and counts
  without the 1/distance weights are told apart (the planted bug);
- PPMI equals its formula entry by entry, written as a loop;
- the randomised truncated SVD gives the top singular subspace of a matrix with a known spectrum;
- the whole recipe puts words by their contexts: a probe trained on texts of some sentiment words reads texts of
  other words that share only their contexts in the corpus, and random vectors do not (the planted case).
"""
from __future__ import annotations

import numpy as np
import pytest

from bert_from_scratch.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from bert_from_scratch.training import count_vectors as cv
from bert_from_scratch.training.probe import probe_features


def hand_counts(sentences, V, window, weighted=True):
    C = np.zeros((V, V))
    for s in sentences:
        for i, a in enumerate(s):
            for j, b in enumerate(s):
                if 0 < abs(i - j) <= window:
                    C[a, b] += 1.0 / abs(i - j) if weighted else 1.0
    return C


def test_cooccurrence_counts_equal_a_hand_count():
    sentences = [np.array([0, 1, 2, 1]), np.array([3]), np.array([2, 3, 0, 0, 1, 4])]
    counts = cv.cooccurrence_counts(sentences, 5, window=2)
    np.testing.assert_allclose(counts, hand_counts(sentences, 5, 2))
    np.testing.assert_allclose(counts, counts.T)
    assert counts[0, 1] == 1 + 1 + 0.5                         # two neighbours at distance 1, one at 2, none beyond
    assert not np.allclose(counts, hand_counts(sentences, 5, 2, weighted=False))    # the check sees the weights
    assert not np.allclose(counts, hand_counts(sentences, 5, 3))                    # and the window
    with pytest.raises(ValueError, match="not supported"):
        cv.cooccurrence_counts(sentences, cv.MAX_VOCAB + 1)
    with pytest.raises(ValueError, match="window"):
        cv.cooccurrence_counts(sentences, 5, window=0)


def one_bincount(sentences, V, window):
    """The counts as they were summed before they were added in chunks: every pair at once, one bincount."""
    pairs = [(ids[:-d] * V + ids[d:], np.full(len(ids) - d, 1.0 / d))
             for ids in sentences for d in range(1, min(window, len(ids) - 1) + 1)]
    c = np.bincount(np.concatenate([p for p, _ in pairs]), weights=np.concatenate([w for _, w in pairs]),
                    minlength=V * V).reshape(V, V)
    return c + c.T


def test_counts_added_in_chunks_equal_one_bincount_to_the_bit(monkeypatch):
    """Memory stays bounded (the pairs are added every PAIRS_PER_CHUNK), and the sums are those of one bincount of
    all the pairs, bit for bit (the main job's count vectors did not move), whatever the chunk and wherever it ends."""
    rng = np.random.default_rng(0)
    sentences = [rng.integers(0, 40, rng.integers(1, 30)) for _ in range(300)]
    reference = one_bincount(sentences, 40, 20)
    for chunk in (1, 7, 1000, 1 << 40):
        monkeypatch.setattr(cv, "PAIRS_PER_CHUNK", chunk)
        assert np.array_equal(cv.cooccurrence_counts(iter(sentences), 40, 20), reference), chunk
    assert not np.array_equal(one_bincount(sentences[:-1], 40, 20), reference)    # the last chunk is counted


def test_ppmi_equals_its_formula():
    counts = np.random.default_rng(0).integers(0, 5, (6, 6)).astype(float)
    counts = counts + counts.T
    counts[2, 3] = counts[3, 2] = 0.0
    got = cv.ppmi(counts, alpha=0.75)
    total, rows = counts.sum(), counts.sum(axis=1)
    context = rows ** 0.75 / (rows ** 0.75).sum()
    for i in range(6):
        for j in range(6):
            want = 0.0 if counts[i, j] == 0 else max(0.0, np.log(counts[i, j] / total / (rows[i] / total) / context[j]))
            assert got[i, j] == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert got.dtype == np.float32 and got[2, 3] == 0 and (got >= 0).all()


def test_truncated_svd_gives_the_top_singular_subspace():
    rng = np.random.default_rng(1)
    U = np.linalg.qr(rng.normal(size=(60, 60)))[0]
    V = np.linalg.qr(rng.normal(size=(60, 60)))[0]
    S = np.r_[np.linspace(50, 20, 8), np.full(52, 0.5)]                 # singular values, a gap after the 8th
    M = (U * S) @ V.T
    vectors = cv.truncated_svd_vectors(M, 8)
    assert vectors.shape == (60, 8)
    np.testing.assert_allclose(vectors @ vectors.T, (U[:, :8] * S[:8]) @ U[:, :8].T, atol=1e-8)
    wrong = cv.truncated_svd_vectors(M, 8, iterations=0, oversample=0, seed=3)       # no refinement: a planted bug
    assert not np.allclose(wrong @ wrong.T, (U[:, :8] * S[:8]) @ U[:, :8].T, atol=1e-3)
    with pytest.raises(ValueError, match="dim"):
        cv.truncated_svd_vectors(M, 61)


def test_count_vectors_place_words_by_their_contexts():
    """Words p1..p4 share contexts with 'loved ... wonderful', n1..n4 with 'hated ... awful'. A probe trained on
    texts of p1, p2 / n1, n2 reads texts of p3, p4 / n3, n4, which it never saw, from the count vectors alone."""
    pos, neg = [f"p{i}" for i in range(1, 5)], [f"n{i}" for i in range(1, 5)]
    filler = "the a film was it and".split()
    tok = Tokenizer(list(SPECIAL_TOKENS) + pos + neg + filler + "loved hated wonderful awful".split())
    rng = np.random.default_rng(0)
    sentences = []
    for _ in range(400):
        for words, cues in ((pos, ("loved", "wonderful")), (neg, ("hated", "awful"))):
            s = [rng.choice(filler), cues[0], rng.choice(words), rng.choice(filler), cues[1], rng.choice(filler)]
            sentences.append(np.array(tok.convert_tokens_to_ids(s)))
    vectors = cv.truncated_svd_vectors(cv.ppmi(cv.cooccurrence_counts(sentences, len(tok), window=3)), 4)

    def split(words_pos, words_neg, n):
        texts, labels = [], []
        for _ in range(n):
            label = int(rng.integers(2))
            w = rng.choice(words_pos if label else words_neg, size=2)
            texts.append(f"{rng.choice(filler)} {w[0]} {rng.choice(filler)} {w[1]}")
            labels.append(label)
        return texts, np.array(labels)

    parts = [split(pos[:2], neg[:2], 200), split(pos[2:], neg[2:], 100), split(pos[2:], neg[2:], 200)]
    read = probe_features(*[(cv.mean_vectors(vectors, tok, t), y) for t, y in parts], num_labels=2)
    assert read["test"] > 0.95
    random_vectors = np.random.default_rng(5).normal(size=vectors.shape)
    blind = probe_features(*[(cv.mean_vectors(random_vectors, tok, t), y) for t, y in parts], num_labels=2)
    assert blind["test"] < 0.8                                  # random vectors do not carry it to unseen words


def test_a_vocabulary_narrower_than_the_width_gives_zeros_in_the_other_dimensions():
    """The main job starts from count vectors, so a corpus of fewer pieces than the hidden size must work too."""
    rng = np.random.default_rng(0)
    sentences = [rng.integers(0, 20, size=12) for _ in range(200)]
    full = cv.count_vectors(sentences, vocab_size=20, dim=20)
    wide = cv.count_vectors(sentences, vocab_size=20, dim=32)                  # (20, 32): 20 dimensions, 12 zero
    assert wide.shape == (20, 32) and not wide[:, 20:].any()
    np.testing.assert_allclose(np.abs(wide[:, :20]), np.abs(full), rtol=1e-4, atol=1e-5)    # signs may flip
    assert cv.initial_word_embeddings(wide, 0.1).std() == pytest.approx(0.1, rel=1e-4)


def test_mean_vectors_leave_out_special_tokens_and_padding():
    tok = Tokenizer(list(SPECIAL_TOKENS) + ["good", "bad"])
    vectors = np.arange(len(tok) * 2, dtype=float).reshape(-1, 2)
    got = cv.mean_vectors(vectors, tok, ["good bad", "bad", "good good good"])
    g, b = tok.convert_tokens_to_ids(["good", "bad"])
    np.testing.assert_allclose(got, [(vectors[g] + vectors[b]) / 2, vectors[b], vectors[g]])


def small_corpus(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(f"word{(d * 7 + i) % 40} is here word{(d + i) % 9}." for i in range(12))
                                  for d in range(12)))
    return corpus


def test_the_data_holds_count_vectors_of_the_training_documents_only(tmp_path):
    from bert_from_scratch.data.corpora import load_documents
    from bert_from_scratch.data.pretraining import tokenize_documents
    from bert_from_scratch.training.pretrain_job import prepare_pretraining_data

    corpus = small_corpus(tmp_path)
    kw = dict(corpus=str(corpus), vocab_size=120, max_seq_length=32, dupe_factor=1, seed=0, log=lambda m: None)
    data = prepare_pretraining_data(**kw, count_vectors_dim=8)
    assert prepare_pretraining_data(**kw).word_vectors is None
    assert data.word_vectors.shape == (len(data.tokenizer), 8) and data.word_vectors.dtype == np.float32
    assert data.word_vectors.std() == pytest.approx(0.02, rel=1e-4)
    np.testing.assert_allclose(data.word_vectors.mean(axis=0), 0, atol=1e-6)

    def vectors_of(docs):
        ids = [np.asarray(data.tokenizer.convert_tokens_to_ids(s)) for d in tokenize_documents(docs, data.tokenizer)
               for s in d]
        return cv.initial_word_embeddings(cv.count_vectors(ids, len(data.tokenizer), 8), 0.02)

    docs = load_documents(str(corpus))
    order = list(range(len(docs)))
    __import__("random").Random(0).shuffle(order)                # the job's seeded document split
    held_out = {order[0]}                                         # 5% of 12 documents rounds to 1
    np.testing.assert_allclose(data.word_vectors, vectors_of([d for i, d in enumerate(docs) if i not in held_out]),
                               atol=1e-6)
    assert not np.allclose(data.word_vectors, vectors_of(docs), atol=1e-4)   # a held-out document would show


def test_pretrain_starts_from_the_count_vectors(tmp_path, capsys):
    from bert_from_scratch.checkpoint import load_safetensors
    from bert_from_scratch.cli import main
    from bert_from_scratch.model.heads import WORD_EMBEDDINGS
    from bert_from_scratch.training.pretrain_job import prepare_pretraining_data

    corpus = small_corpus(tmp_path)
    common = ["pretrain", "--corpus", str(corpus), "--steps", "1", "--batch-size", "4", "--seq-len", "32",
              "--vocab-size", "120", "--layers", "1", "--hidden", "16", "--heads", "2", "--intermediate", "32",
              "--lr", "1e-9", "--no-progress", "--backend", "numpy"]
    assert main(common + ["--out", str(tmp_path / "counts")]) == 0             # the main job's default since 2026-12-05
    assert main(common + ["--out", str(tmp_path / "random"), "--embeddings-init", "random"]) == 0
    assert "word embeddings: count vectors" in capsys.readouterr().out
    want = prepare_pretraining_data(str(corpus), 120, None, 32, dupe_factor=2, seed=0, log=lambda m: None,
                                    count_vectors_dim=16, init_std=0.1, count_window=20).word_vectors  # the default's
    got = {run: load_safetensors(tmp_path / run / "checkpoint" / "model.safetensors")[WORD_EMBEDDINGS]
           for run in ("counts", "random")}
    np.testing.assert_allclose(got["counts"], want, atol=1e-6)           # one step at lr 1e-9 moves nothing visible
    assert not np.allclose(got["random"], want, atol=1e-3)
    with pytest.raises(SystemExit) as refused:                            # argparse: one usage line and the error
        main(common + ["--out", str(tmp_path / "x"), "--embeddings-init", "glove"])
    assert refused.value.code == 2 and "invalid choice: 'glove'" in capsys.readouterr().err
