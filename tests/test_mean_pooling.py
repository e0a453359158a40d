"""A sequence classifier that reads the last layer's mean over the real tokens (``pooling="mean"``, Sentence-BERT's
pooling) instead of the pooler's output at [CLS] (Hugging Face's): its forward and backward against central
differences (and a planted bug caught), padding ignored, saved and loaded, LP-FT reading the same features, and the
option reaching ``finetune`` and ``transfer``; bad values refused in one line.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from bert_from_scratch.checkpoint import CheckpointError
from bert_from_scratch.cli import main
from bert_from_scratch.data.classification import encode_examples
from bert_from_scratch.model import BertForSequenceClassification
from bert_from_scratch.nn import layers
from bert_from_scratch.nn.gradcheck import gradcheck
from bert_from_scratch.training import classifier_first as lp
from bert_from_scratch.training import finetuning as ft
from bert_from_scratch.training import transfer
from bert_from_scratch.training.transfer_runs import run_settings

from test_finetune import keyword_data, pretraining_checkpoint, tiny_config, tok  # noqa: F401  (fixtures)
from test_model import BACKENDS, TOL, fixed_rng_loss, tiny_batch
from test_model import tiny_config as tiny_model_config


def _mean_loss(x, mask, w, backward=layers.masked_mean_backward):
    """A scalar of the mean's output, (y * w).sum(), and the gradient of x that ``backward`` gives for it."""
    y, cache = layers.masked_mean_forward(x, mask)
    return float((y * w).sum()), backward(w, cache)


def test_the_masked_mean_passes_the_gradient_check_and_a_planted_bug_fails_it():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 4))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    _, dx = _mean_loss(x, mask, w)
    gradcheck(lambda: _mean_loss(x, mask, w)[0], {"x": x}, {"x": dx}, max_entries=60).assert_ok()
    assert np.all(dx[mask == 0] == 0)                                   # a padded position gets nothing

    def forgets_the_mask(dy, cache):                                    # planted: pads get a share of the gradient
        m, count = cache
        return np.broadcast_to((dy / count)[:, None, :], m.shape[:2] + dy.shape[-1:]).copy()
    _, wrong = _mean_loss(x, mask, w, forgets_the_mask)
    assert not gradcheck(lambda: _mean_loss(x, mask, w)[0], {"x": x}, {"x": wrong}, max_entries=60).ok


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_mean_pooled_classifier_every_parameter(backend):
    model = BertForSequenceClassification(tiny_model_config(), num_labels=3, seed=0, dtype=np.float64,
                                          backend=backend, pooling="mean")
    ids, tt, mask, _, _ = tiny_batch()
    loss = fixed_rng_loss(model, True, input_ids=ids, token_type_ids=tt, attention_mask=mask, labels=np.array([2, 0, 1]))
    loss()
    grads = model.backward()
    assert set(grads) == set(model.params)
    assert all(not grads[n].any() for n in model.params if ".pooler." in n)      # the pooler is not read
    assert grads["bert.encoder.layer.1.output.dense.weight"].any()              # every token's last layer is
    gradcheck(loss, model.params, grads, h=1e-5, tol=TOL, max_entries=6).assert_ok()


def test_the_classifier_reads_the_mean_of_the_real_tokens_and_padding_changes_nothing():
    model = BertForSequenceClassification(tiny_model_config(), num_labels=2, seed=0, dtype=np.float64, pooling="mean")
    ids, tt, mask, _, _ = tiny_batch()
    h = model.encode(ids, tt, mask).last_hidden_state                           # (B, T, H)
    want = np.stack([h[b][mask[b] == 1].mean(axis=0) for b in range(len(ids))])
    np.testing.assert_allclose(model.features(ids, tt, mask), want, rtol=1e-12)
    W, bias = model.params["classifier.weight"], model.params["classifier.bias"]
    logits = model.forward(ids, tt, mask).logits
    np.testing.assert_allclose(logits, want @ W.T + bias, rtol=1e-12)
    n = int(mask[2].sum())                                                      # row 2 alone, unpadded
    alone = model.forward(ids[2:3, :n], tt[2:3, :n], mask[2:3, :n]).logits
    np.testing.assert_allclose(alone[0], logits[2], rtol=1e-9)
    cls = BertForSequenceClassification(tiny_model_config(), num_labels=2, seed=0, dtype=np.float64)
    assert not np.allclose(cls.forward(ids, tt, mask).logits, logits)          # the same weights read otherwise


def test_bad_pooling_values_and_masks_are_refused_in_one_line():
    with pytest.raises(ValueError, match="pooling must be one of 'cls', 'mean'; got 'max'"):
        BertForSequenceClassification(tiny_model_config(), pooling="max")
    model = BertForSequenceClassification(tiny_model_config(), pooling="mean")
    ids, tt, mask, _, _ = tiny_batch()
    mask[1] = 0
    with pytest.raises(ValueError, match="no real tokens"):
        model.forward(ids, tt, mask)


def test_the_pooling_is_saved_and_loaded_and_a_bad_one_refused(tmp_path):
    model = BertForSequenceClassification(tiny_model_config(), num_labels=2, seed=0, pooling="mean")
    model.save_pretrained(tmp_path / "mean")
    assert json.loads((tmp_path / "mean" / "config.json").read_text())["classifier_pooling"] == "mean"
    back = BertForSequenceClassification.from_pretrained(tmp_path / "mean")
    assert back.pooling == "mean"
    ids, tt, mask, _, _ = tiny_batch()
    np.testing.assert_array_equal(back.forward(ids, tt, mask).logits, model.forward(ids, tt, mask).logits)
    BertForSequenceClassification(tiny_model_config(), num_labels=2).save_pretrained(tmp_path / "cls")
    assert "classifier_pooling" not in json.loads((tmp_path / "cls" / "config.json").read_text())   # as Hugging Face
    assert BertForSequenceClassification.from_pretrained(tmp_path / "cls").pooling == "cls"
    cfg = json.loads((tmp_path / "mean" / "config.json").read_text())
    (tmp_path / "mean" / "config.json").write_text(json.dumps({**cfg, "classifier_pooling": "max"}))
    with pytest.raises(CheckpointError, match="config.json: pooling must be one of"):
        BertForSequenceClassification.from_pretrained(tmp_path / "mean")


def test_lpft_reads_what_the_mean_pooled_classifier_reads(tok, keyword_data):
    model = BertForSequenceClassification(tiny_config(len(tok), dropout=0.1), num_labels=2, seed=0, pooling="mean")
    enc = encode_examples(tok, keyword_data.dev, 16, 2)
    x = lp.pooled_features(model, enc, batch_size=7)                            # length order, put back
    for i in (0, 17, len(enc) - 1):
        one = ft.collate(enc, [i])
        np.testing.assert_allclose(x[i], model.features(one["input_ids"], one["token_type_ids"],
                                                        one["attention_mask"])[0], rtol=1e-4, atol=1e-6)


def test_the_pooling_flag_reaches_transfer_and_every_run(monkeypatch, tmp_path, capsys):
    seen = []
    monkeypatch.setattr(transfer, "run_transfer", lambda checkpoints, out, p, **kw: seen.append(p.pooling))
    for flags in (["--pooling", "mean"], []):
        assert main(["transfer", *flags, "--no-minilm", "--out", str(tmp_path)]) == 0
    assert seen == ["mean", "cls"]
    with pytest.raises(SystemExit):
        main(["transfer", "--pooling", "max"])
    assert "invalid choice: 'max'" in capsys.readouterr().err

    class Loaded(Exception):
        pass

    def load(*args, **kw):
        raise Loaded(kw["pooling"])
    monkeypatch.setattr(transfer, "load_for_classification", load)
    data = type("Data", (), {"num_labels": 2})()
    with pytest.raises(Loaded, match="^mean$"):
        transfer._one_run(transfer.Row("r", "random", digest="d"), data, tmp_path, 1e-3, 0,
                          transfer.Protocol(pooling="mean"), print)


def test_finetune_trains_saves_and_predicts_with_mean_pooling(tmp_path, capsys, pretraining_checkpoint):
    from test_finetune import keyword_examples, parse, write_csv
    from bert_from_scratch.cli import finetune as cli_ft
    from bert_from_scratch.training.classification_models import load_classifier

    folder, _ = pretraining_checkpoint
    rows = lambda examples: [f"{e.text},{'pos' if e.label else 'neg'}" for e in examples]   # noqa: E731
    train = write_csv(tmp_path / "train.csv", "text,label", rows(keyword_examples(48, 1)))
    dev = write_csv(tmp_path / "dev.csv", "text,label", rows(keyword_examples(24, 2)))
    args = parse(cli_ft.add_finetune_arguments, ["--init", str(folder), "--train", str(train), "--dev", str(dev),
                                                 "--epochs", "1", "--max-length", "16", "--no-progress",
                                                 "--classifier-first", "1", "--pooling", "mean",
                                                 "--out", str(tmp_path / "a")])
    assert cli_ft.cli_finetune(args) == 0
    model, _, _ = load_classifier(tmp_path / "a")
    assert model.pooling == "mean"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tmp_path / "a"), "--json", "a fine film"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["label"] in ("neg", "pos")
    assert main(["finetune", "--task", "token-classification", "--pooling", "mean", "--out", str(tmp_path / "f")]) == 2
    assert "--pooling is for text-classification" in capsys.readouterr().err


def test_a_mean_pooled_run_is_another_run_for_resume():
    """Records made before the option (no "pooling" key) still match a "cls" run; a "mean" run differs from both."""
    cls = run_settings("d", "random", None, 1e-3, 0, False, transfer.Protocol())
    mean = run_settings("d", "random", None, 1e-3, 0, False, transfer.Protocol(pooling="mean"))
    assert "pooling" not in cls and mean == {**cls, "pooling": "mean"}
