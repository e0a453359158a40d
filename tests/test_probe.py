"""Linear probes on frozen features (training/probe.py, ``bert-from-scratch probe``).

- the ridge probe reads a label that is linear in the features, and finds nothing in features that do not hold it
  (the same call, labels shuffled: the planted case);
- lambda is chosen on dev, never on test (flipping the test labels does not move it);
- the features are the encoder's: the masked mean of the embedding layer and of the last layer, [CLS], the pooler;
- the command runs end to end on a tiny checkpoint (with the count-vectors row, whose vectors
  tests/test_count_vectors.py checks), refuses bad options in one line and never replaces an earlier table
  without --overwrite.
"""
from __future__ import annotations

import json
import shutil

import numpy as np

from bert_from_scratch.cli import main
from bert_from_scratch.model import BertForSequenceClassification
from bert_from_scratch.training import probe


def splits(rng, n, informative=True, k=3, F=12):
    """Features (n, F) and labels: the label is the argmax of 3 fixed directions (informative) or random."""
    scale = np.random.default_rng(99).uniform(0.1, 10, F)                 # badly scaled on purpose, every split alike
    Z = rng.normal(size=(n, F))
    y = Z[:, :k].argmax(axis=1) if informative else rng.integers(0, k, n)
    return Z * scale, y


def test_the_probe_reads_a_linear_label_and_finds_nothing_in_unrelated_features():
    rng = np.random.default_rng(0)
    good = probe.probe_features(splits(rng, 600), splits(rng, 300), splits(rng, 300), num_labels=3)
    assert good["test"] > 0.85 and good["test_interval"][0] <= good["test"] <= good["test_interval"][1]
    rng = np.random.default_rng(0)
    none = probe.probe_features(*(splits(rng, n, informative=False) for n in (600, 300, 300)), num_labels=3)
    assert none["test"] < 0.45                                             # chance is 1/3


def test_lambda_is_chosen_on_dev_never_on_test():
    rng = np.random.default_rng(1)
    train, dev, test = splits(rng, 80, F=40), splits(rng, 200, F=40), splits(rng, 200, F=40)
    chosen = probe.probe_features(train, dev, test, num_labels=3)
    flipped = probe.probe_features(train, dev, (test[0], (test[1] + 1) % 3), num_labels=3)
    assert chosen["lambda"] == flipped["lambda"] and chosen["dev"] == flipped["dev"]
    assert chosen["lambda"] == max(probe.LAMBDAS, key=lambda l: (chosen["dev_by_lambda"][f"{l:g}"], l))
    assert flipped["test"] < chosen["test"]


def test_features_are_the_encoders_masked_means_cls_and_pooler(tiny_review_checkpoint):
    _, tok, cfg = tiny_review_checkpoint
    model = BertForSequenceClassification(cfg, num_labels=2, seed=0)
    texts = ["the film is good", "a bad and funny story that is the worst movie", "best"]
    feats = probe.frozen_features(model, tok, texts, batch_size=2)
    enc = tok.encode_batch(texts, max_length=64)
    out = model.encode(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], output_hidden_states=True)
    for b, text in enumerate(texts):
        n = int(enc["attention_mask"][b].sum())                          # [CLS] ... [SEP], no padding
        np.testing.assert_allclose(feats["embeddings-mean"][b], out.hidden_states[0][b, :n].mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(feats["last-mean"][b], out.last_hidden_state[b, :n].mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(feats["cls"][b], out.last_hidden_state[b, 0], atol=1e-5)
        np.testing.assert_allclose(feats["pooled"][b], out.pooler_output[b], atol=1e-5)
    assert all(f.shape == (3, 16) and f.dtype == np.float64 for f in feats.values())


def test_probe_command_end_to_end(tiny_review_checkpoint, tmp_path, capsys):
    folder, _, _ = tiny_review_checkpoint
    same = shutil.copytree(folder, tmp_path / "same")            # same config and vocabulary: no second twin
    assert main(["probe", "--no-minilm", "--checkpoint", str(folder), "--checkpoint", str(same),
                 "--max-train-examples", "200", "--out", str(tmp_path / "p"), "--count-vectors", "python-docs"]) == 0
    report = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert [r["name"] for r in report["rows"]] == [f"random init (like {folder})", f"pretrained: {folder}",
                                                   f"count vectors of python-docs (vocab of {folder})",
                                                   f"pretrained: {same}"]
    assert report["n_train"] == 200 and report["n_test"] == 1276
    for row in report["rows"]:
        assert set(row["by_feature"]) == (set(probe.FEATURES) if row["init"] != "counts" else {"embeddings-mean"})
        assert all(0 <= f["test"] <= 1 and f["lambda"] in probe.LAMBDAS for f in row["by_feature"].values())
    out = capsys.readouterr().out
    assert "Linear probes on frozen features" in out and "majority class" in out
    assert "count vectors: " in out and "of python-docs" in out
    # a second run into the same folder must not replace the table: refused in one line, the file untouched
    before = (tmp_path / "p" / "probe.json").read_bytes()
    assert main(["probe", "--no-minilm", "--checkpoint", str(folder), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "already holds a probe table" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "p" / "probe.json").read_bytes() == before


def test_probe_command_refuses_bad_options_in_one_line(tmp_path, capsys):
    for argv, words in ((["probe", "--checkpoint", str(tmp_path / "nope")], "no such folder"),
                        (["probe", "--no-minilm"], "nothing to probe"),
                        (["probe", "--max-train-examples", "1"], "at least 2"),
                        (["probe", "--count-vectors"], "needs a --checkpoint"),
                        (["probe", "--checkpoint", str(tmp_path), "--count-vectors", "bbc+nosuch"],
                         "corpus path not found: nosuch")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1
