"""LP-FT (training/classifier_first.py): the classifier trained alone on frozen features, then fine-tuning.

Phase 1 must read exactly what the classifier reads (the pooler's output, no dropout), move only the classifier,
learn (its loss falls, its dev accuracy rises where the features hold the task), and leave the best epoch's
classifier in the model; ``finetune`` and ``transfer`` pass the option through and refuse bad values in one line.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from bert_from_scratch.cli import main
from bert_from_scratch.data.classification import encode_examples
from bert_from_scratch.model import BertForSequenceClassification
from bert_from_scratch.nn.layers import cross_entropy_forward, linear_forward
from bert_from_scratch.training import classifier_first as lp
from bert_from_scratch.training import finetuning as ft
from bert_from_scratch.training import transfer

from test_finetune import keyword_data, pretraining_checkpoint, tiny_config, tok  # noqa: F401  (fixtures)


def _model(tok, seed=0, **kw):
    return BertForSequenceClassification(tiny_config(len(tok), dropout=0.1, **kw), num_labels=2, seed=seed)


def _features_loss(model, encoded):
    x = lp.pooled_features(model, encoded)
    logits, _ = linear_forward(x, model.params["classifier.weight"], model.params["classifier.bias"])
    return float(cross_entropy_forward(logits, encoded.labels)[0])


def test_the_features_are_what_the_classifier_reads(tok, keyword_data):
    """pooled features -> the classifier's linear layer == the model's own logits without dropout, example by
    example, though the features are computed in length order (the order must be put back)."""
    model = _model(tok)
    enc = encode_examples(tok, keyword_data.dev, 16, 2)
    assert len(set(enc.lengths.tolist())) > 1                       # lengths differ: the order is really permuted
    x = lp.pooled_features(model, enc, batch_size=7)                # (N, H)
    logits, _ = linear_forward(x, model.params["classifier.weight"], model.params["classifier.bias"])
    for i in (0, 1, 17, 42, len(enc) - 1):
        one = ft.collate(enc, [i])
        ref = model.forward(one["input_ids"], one["token_type_ids"], one["attention_mask"], training=False).logits
        np.testing.assert_allclose(logits[i], ref[0], rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def tuned_encoder(tmp_path_factory, tok, keyword_data):
    """A tiny classifier fine-tuned on the keyword task (its features hold it), then given a new random classifier."""
    model = BertForSequenceClassification(tiny_config(len(tok)), num_labels=2, seed=0)
    result = ft.finetune(model, tok, keyword_data, tmp_path_factory.mktemp("tuned"), epochs=3, batch_size=16,
                         lr=1e-2, max_length=16, patience=3, progress=False, log=lambda s: None, plot=False)
    assert result.test_accuracy >= 0.85
    rng = np.random.default_rng(9)
    model.params["classifier.weight"][...] = rng.normal(0, 0.02, model.params["classifier.weight"].shape)
    model.params["classifier.bias"][...] = 0
    return model


def test_only_the_classifier_learns_and_the_best_epoch_is_kept(tok, keyword_data, tuned_encoder):
    """On features that hold the task, phase 1 alone finds it; nothing but the classifier moves."""
    model = tuned_encoder
    train, dev = (encode_examples(tok, split, 16, 2) for split in (keyword_data.train, keyword_data.dev))
    before = {k: v.copy() for k, v in model.params.items()}
    loss_before = _features_loss(model, train)
    info = lp.train_classifier_first(model, train, dev, epochs=10, batch_size=16, lr=3e-2, seed=0)
    for name, value in model.params.items():                        # the encoder and pooler did not move
        moved = not np.array_equal(value, before[name])
        assert moved == (name in lp.CLASSIFIER), name
    assert _features_loss(model, train) < 0.5 * loss_before        # it learned on the training features
    assert info["dev_accuracy"] >= 0.85, info                      # majority class: 62%
    # the best epoch: the highest dev accuracy, ties broken by the lower dev loss (here an early one: the loss rises
    # again at this rate, so keeping the last epoch's classifier would be caught below)
    keys = [(a, -l) for a, l in zip(info["dev_accuracy_by_epoch"], info["dev_loss_by_epoch"])]
    assert len(keys) == 10 and info["best_epoch"] == 1 + max(range(10), key=lambda i: keys[i]) < 10
    assert (info["dev_accuracy"], -info["dev_loss"]) == max(keys)
    # the model holds that epoch's classifier
    x = lp.pooled_features(model, dev)
    logits, _ = linear_forward(x, model.params["classifier.weight"], model.params["classifier.bias"])
    assert (logits.argmax(axis=1) == dev.labels).mean() == pytest.approx(info["dev_accuracy"])
    assert float(cross_entropy_forward(logits, dev.labels)[0]) == pytest.approx(info["dev_loss"], rel=1e-5)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")     # lr 1e300 in float32, on purpose
def test_a_diverging_phase_one_puts_the_classifier_back(tok, keyword_data):
    """Phase 1 steps run in the one training loop: a learning rate of 1e300 makes the weights non-finite, the loop
    stops, and phase 2 starts from the classifier as it was (nothing non-finite is left in the model)."""
    train, dev = (encode_examples(tok, split, 16, 2) for split in (keyword_data.train, keyword_data.dev))
    model, logs = _model(tok), []
    before = {name: model.params[name].copy() for name in lp.CLASSIFIER}
    info = lp.train_classifier_first(model, train, dev, epochs=2, lr=1e300, log=logs.append)
    assert info["best_epoch"] == 0 and info["dev_accuracy"] is None and info["dev_accuracy_by_epoch"] == []
    assert all(np.array_equal(model.params[name], before[name]) for name in lp.CLASSIFIER)
    assert any("training diverged at step" in line and "put back" in line for line in logs), logs


def test_phase_one_is_seeded_and_refuses_what_it_cannot_do(tok, keyword_data):
    train, dev = (encode_examples(tok, split, 16, 2) for split in (keyword_data.train, keyword_data.dev))
    runs = []
    for _ in range(2):
        model = _model(tok)
        lp.train_classifier_first(model, train, dev, epochs=3, seed=5)
        runs.append(model.params["classifier.weight"].copy())
    np.testing.assert_array_equal(*runs)
    with pytest.raises(ft.FinetuneError, match="classifier_first must be an integer >= 1"):
        lp.train_classifier_first(_model(tok), train, dev, epochs=0)
    regression = BertForSequenceClassification(tiny_config(len(tok)), num_labels=1, seed=0)
    with pytest.raises(ft.FinetuneError, match="single-label classification .* 'regression'"):
        lp.train_classifier_first(regression, train, dev, epochs=2)


def test_finetune_runs_phase_one_first_and_records_it(tmp_path, tok, keyword_data):
    logs = []
    model = _model(tok)
    result = ft.finetune(model, tok, keyword_data, tmp_path / "a", epochs=2, batch_size=16, lr=1e-2, max_length=16,
                         patience=2, progress=False, log=logs.append, plot=False, classifier_first=4)
    assert result.classifier_first["epochs"] == 4 and 1 <= result.classifier_first["best_epoch"] <= 4
    assert any(line.startswith("classifier first, 4 epochs") for line in logs)
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["classifier_first"]["best_epoch"] == result.classifier_first["best_epoch"]
    assert saved["training_args"]["classifier_first"] == 4
    assert json.loads((tmp_path / "a" / "best" / "training_args.json").read_text())["classifier_first"] == 4
    # without it: no record, and the fine-tuning starts from another classifier (phase 1 moved it)
    plain = ft.finetune(_model(tok), tok, keyword_data, tmp_path / "b", epochs=1, batch_size=16, lr=1e-2,
                        max_length=16, progress=False, log=lambda s: None, plot=False)
    assert plain.classifier_first is None
    with pytest.raises(ft.FinetuneError, match="classifier_first must be an integer >= 0; got -1"):
        ft.finetune(_model(tok), tok, keyword_data, tmp_path / "c", max_length=16, progress=False,
                    log=lambda s: None, classifier_first=-1)


def test_the_transfer_flag_reaches_every_run_and_the_table_says_so(monkeypatch, tmp_path, capsys):
    seen = []
    monkeypatch.setattr(transfer, "run_transfer", lambda checkpoints, out, p, **kw: seen.append(p.classifier_first))
    for flags in (["--classifier-first", "10"], []):
        assert main(["transfer", *flags, "--no-minilm", "--out", str(tmp_path)]) == 0
    assert seen == [10, 0]
    assert main(["transfer", "--classifier-first", "-2", "--no-minilm"]) == 2
    err = capsys.readouterr().err
    assert "--classifier-first must be at least 0; got -2" in err and len(err.strip().splitlines()) == 1
    report = {"dataset": "d", "n_test": 4, "majority_test_accuracy": .5, "rows": [],
              "protocol": {**transfer.asdict(transfer.Protocol()), "classifier_first": 10}}
    assert "the classifier first trained alone for 10 epochs (LP-FT)" in transfer.format_table(report)
    report["protocol"]["classifier_first"] = 0
    assert "LP-FT" not in transfer.format_table(report)


def test_transfer_runs_hand_the_option_to_finetune(monkeypatch, tmp_path):
    calls = []

    def fake_finetune(*args, **kw):
        calls.append(kw["classifier_first"])
        raise RuntimeError("stop here")
    monkeypatch.setattr(transfer, "finetune", fake_finetune)
    monkeypatch.setattr(transfer, "load_for_classification", lambda *a, **k: (None, None))
    p = transfer.Protocol(classifier_first=7)
    with pytest.raises(RuntimeError, match="stop here"):
        row = transfer.Row("r", "random", digest="0" * 64)          # a digest given: no model or data to hash
        transfer._one_run(row, type("D", (), {"num_labels": 2})(), tmp_path, 1e-3, 0, p, print)
    assert calls == [7]


def test_the_finetune_command_runs_phase_one(tmp_path, capsys, pretraining_checkpoint):
    from test_finetune import keyword_examples, parse, write_csv
    from bert_from_scratch.cli import finetune as cli_ft

    folder, _ = pretraining_checkpoint
    rows = lambda examples: [f"{e.text},{'pos' if e.label else 'neg'}" for e in examples]   # noqa: E731
    train = write_csv(tmp_path / "train.csv", "text,label", rows(keyword_examples(48, 1)))
    dev = write_csv(tmp_path / "dev.csv", "text,label", rows(keyword_examples(24, 2)))
    common = ["--init", str(folder), "--train", str(train), "--dev", str(dev), "--epochs", "1", "--max-length", "16",
              "--no-progress"]
    args = parse(cli_ft.add_finetune_arguments, [*common, "--classifier-first", "2", "--out", str(tmp_path / "a")])
    assert cli_ft.cli_finetune(args) == 0
    assert "classifier first, 2 epochs on the frozen encoder's features" in capsys.readouterr().out
    assert json.loads((tmp_path / "a" / "results.json").read_text())["classifier_first"]["epochs"] == 2
    args = parse(cli_ft.add_finetune_arguments, [*common, "--classifier-first", "-1", "--out", str(tmp_path / "b")])
    assert cli_ft.cli_finetune(args) == 2
    err = capsys.readouterr().err.strip()
    assert "classifier_first must be an integer >= 0; got -1" in err and len(err.splitlines()) == 1
