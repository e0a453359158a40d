"""Fine-tuning (issue 7): a tiny run learns, the head's gradients are right, checkpoints load
bit for bit, metrics match hand counts, and bad input gives one clear line instead of a traceback."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from bert_from_scratch.cli import finetune as cli_ft
from bert_from_scratch.data import classification as examples
from bert_from_scratch.training import classification_models as models
from bert_from_scratch.training import finetuning as ft
from bert_from_scratch.training import metrics
from bert_from_scratch.checkpoint import load_safetensors
from bert_from_scratch.config import BertConfig
from bert_from_scratch.data.labeled import ClassificationData, Example
from bert_from_scratch.nn.gradcheck import gradcheck
from bert_from_scratch.model import BertForPreTraining, BertForSequenceClassification
from bert_from_scratch.data.tokenizer import SPECIAL_TOKENS, Tokenizer

POSITIVE, NEGATIVE = ["good", "great", "fine"], ["bad", "awful", "poor"]
FILLER = "the a movie film was is very plot actors story and of it".split()


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(list(SPECIAL_TOKENS) + POSITIVE + NEGATIVE + FILLER)


def keyword_examples(n, seed, pairs=False):
    """Label 1 iff the text holds a positive word (40% of examples), else a negative word: a
    task a model must *read* to solve (the majority class gives 60%)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        label = int(rng.random() < 0.4)
        words = [str(w) for w in rng.choice(FILLER, size=int(rng.integers(3, 9)))]
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POSITIVE if label else NEGATIVE)))
        if pairs:        # the keyword is in the second sentence
            out.append(Example(" ".join(rng.choice(FILLER, size=3)), label, " ".join(words)))
        else:
            out.append(Example(" ".join(words), label))
    return out


def tiny_config(vocab_size, dropout=0.0, **kw):
    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=32,
                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, **kw)


@pytest.fixture(scope="module")
def keyword_data():
    return ClassificationData(keyword_examples(320, 1), keyword_examples(100, 2), keyword_examples(100, 3),
                              ["negative", "positive"], "keywords")


@pytest.fixture(scope="module")
def pretraining_checkpoint(tmp_path_factory, tok):
    """A folder as `bert-from-scratch pretrain` writes it: config.json, model.safetensors (MLM/NSP heads), vocab.txt."""
    folder = tmp_path_factory.mktemp("pretrain") / "checkpoint"
    model = BertForPreTraining(tiny_config(len(tok), dropout=0.1), seed=3)
    model.save_pretrained(folder)
    tok.save_vocab(folder / "vocab.txt")
    return folder, model


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------
def test_tiny_finetune_learns_and_saves_the_best_model(tmp_path, tok, keyword_data):
    model = BertForSequenceClassification(tiny_config(len(tok)), num_labels=2, seed=0)
    result = ft.finetune(model, tok, keyword_data, tmp_path, epochs=3, batch_size=16, lr=1e-2, max_length=16,
                         patience=3, seed=0, progress=False, log=lambda s: None)
    assert result.majority_dev_accuracy == pytest.approx(0.62)
    assert len(result.epochs) == 3 and result.steps == 3 * 20
    # it learned: well above always answering the majority class
    assert result.best_dev_accuracy >= result.majority_dev_accuracy + 0.25, result.dev_accuracies
    assert result.test_accuracy >= 0.85 and result.test_macro_f1 >= 0.85
    # the best epoch: highest dev accuracy, ties broken by macro-F1, then by lower dev loss
    keys = [(e["dev_accuracy"], e["dev_macro_f1"], -round(e["dev_loss"], 4)) for e in result.epochs]
    assert result.best_epoch == 1 + max(range(3), key=lambda i: keys[i])
    assert result.best_dev_accuracy == max(result.dev_accuracies)

    best = tmp_path / "best"
    for name in ("config.json", "model.safetensors", "vocab.txt", "training_args.json"):
        assert (best / name).is_file(), name
    config = json.loads((best / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert not list(tmp_path.glob(".best*")), "a temporary checkpoint folder was left behind"
    # on return the model holds exactly the saved (best) weights
    saved = load_safetensors(best / "model.safetensors")
    assert all(np.array_equal(saved[k], model.params[k]) for k in model.params)
    # the test confusion matrix counts every test example; accuracy is its trace share
    cm = result.confusion_matrix
    assert result.confusion_split == "test" and cm.sum() == 100
    assert result.test_accuracy == pytest.approx(np.trace(cm) / 100)
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved_results = json.loads((tmp_path / "results.json").read_text())
    assert saved_results["test_accuracy"] == result.test_accuracy
    assert saved_results["best_epoch"] == result.best_epoch

    # predict() with the checkpoint agrees with the model in memory
    texts = ["the movie was great", "the plot was awful", "it is poor", "very good film"]
    predictions = models.predict(best, texts)
    batch = tok.encode_batch(texts, max_length=16)
    logits = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).logits
    assert [label for label, _ in predictions] == [["negative", "positive"][k] for k in logits.argmax(axis=1)]
    assert [label for label, _ in predictions] == ["positive", "negative", "negative", "positive"]
    for _, probs in predictions:
        assert set(probs) == {"negative", "positive"} and sum(probs.values()) == pytest.approx(1.0)


def test_early_stopping_stops_after_patience_and_keeps_the_first_best(tmp_path, tok, keyword_data):
    model = BertForSequenceClassification(tiny_config(len(tok)), num_labels=2, seed=0)
    # a learning rate this small changes no prediction and the dev loss by far less than 1e-4: no progress
    result = ft.finetune(model, tok, keyword_data, tmp_path, epochs=5, batch_size=32, lr=1e-9, max_length=16,
                         patience=1, progress=False, log=lambda s: None)
    assert [e["epoch"] for e in result.epochs] == [1, 2]
    assert result.stopped_early and result.best_epoch == 1
    assert json.loads((tmp_path / "best" / "training_args.json").read_text())["best_epoch"] == 1


def test_freeze_word_embeddings_leaves_them_and_only_them_as_they_were(tmp_path, tok, keyword_data):
    """--freeze-word-embeddings: the word embeddings end bit for bit where they began, every other tensor moved;
    without the option the same run moves them (so the check would catch an option that freezes nothing)."""
    word = "bert.embeddings.word_embeddings.weight"
    moved = {}
    for frozen in (True, False):
        model = BertForSequenceClassification(tiny_config(len(tok)), num_labels=2, seed=0)
        start = {k: v.copy() for k, v in model.params.items()}
        result = ft.finetune(model, tok, keyword_data, tmp_path / str(frozen), epochs=3, batch_size=16, lr=1e-2,
                             max_length=16, patience=3, progress=False, log=lambda s: None, plot=False,
                             freeze_word_embeddings=frozen)
        moved[frozen] = {k for k in start if not np.array_equal(start[k], model.params[k])}
        args = json.loads((tmp_path / str(frozen) / "best" / "training_args.json").read_text())
        assert args["freeze_word_embeddings"] is frozen
        assert result.steps == 3 * 20
    assert word in moved[False] and word not in moved[True]
    assert moved[True] == moved[False] - {word}


def test_finetune_rejects_bad_arguments(tmp_path, tok, keyword_data):
    model = BertForSequenceClassification(tiny_config(len(tok)), num_labels=3, seed=0)
    with pytest.raises(ft.FinetuneError, match="2 labels .* 3 outputs"):
        ft.finetune(model, tok, keyword_data, tmp_path, max_length=16, progress=False, log=lambda s: None)
    model = BertForSequenceClassification(tiny_config(len(tok)), num_labels=2, seed=0)
    with pytest.raises(ft.FinetuneError, match="epochs must be an integer >= 1"):
        ft.finetune(model, tok, keyword_data, tmp_path, epochs=0, progress=False, log=lambda s: None)
    with pytest.raises(ft.FinetuneError, match="max_length 64 exceeds .* 32"):
        ft.finetune(model, tok, keyword_data, tmp_path, max_length=64, progress=False, log=lambda s: None)
    other = Tokenizer(list(SPECIAL_TOKENS) + ["x"])
    with pytest.raises(ft.FinetuneError, match="vocab_size"):
        ft.finetune(model, other, keyword_data, tmp_path, max_length=16, progress=False, log=lambda s: None)
    empty_dev = ClassificationData(keyword_data.train, [], [], keyword_data.label_names)
    with pytest.raises(ft.FinetuneError, match="dev split is empty"):
        ft.finetune(model, tok, empty_dev, tmp_path, max_length=16, progress=False, log=lambda s: None)


# ----------------------------------------------------------------------------------------------
# gradients of the classification head
# ----------------------------------------------------------------------------------------------
def test_classification_head_gradients_pass_gradcheck(tok):
    cfg = tiny_config(len(tok), dropout=0.1)
    model = BertForSequenceClassification(cfg, num_labels=3, seed=1, dtype=np.float64)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, len(tok), (3, 6))
    types = np.array([[0, 0, 0, 1, 1, 1]] * 3)
    mask = np.array([[1] * 6, [1] * 5 + [0], [1] * 4 + [0, 0]])
    labels = np.array([0, 2, 1])

    def loss():
        model.rng = np.random.default_rng(7)           # the same dropout masks at every evaluation
        return model.forward(ids, types, mask, labels=labels, training=True).loss

    loss()
    grads = model.backward()
    names = ["classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "bert.pooler.dense.bias",
             "bert.encoder.layer.0.output.dense.weight", "bert.embeddings.word_embeddings.weight"]
    report = gradcheck(loss, model.params, grads, names=names, max_entries=30)
    report.assert_ok()
    assert np.abs(grads["classifier.bias"]).max() > 1e-3      # a real gradient, not an all-zero pass

    # the checker rejects a wrong head gradient: softmax(z) without subtracting the one-hot label
    wrong = dict(grads)
    wrong["classifier.bias"] = grads["classifier.bias"] + np.bincount(labels, minlength=3) / len(labels)
    assert not gradcheck(loss, model.params, wrong, names=["classifier.bias"]).ok
    # ... and one scaled by 2% (a dropout mask applied twice, say)
    wrong = dict(grads, **{"classifier.weight": grads["classifier.weight"] * 1.02})
    assert not gradcheck(loss, model.params, wrong, names=["classifier.weight"]).ok


# ----------------------------------------------------------------------------------------------
# loading the model to fine-tune
# ----------------------------------------------------------------------------------------------
def test_pretraining_checkpoint_loads_bit_identical_with_a_new_head(pretraining_checkpoint):
    folder, pretrained = pretraining_checkpoint
    notes = []
    model, tokenizer = models.load_for_classification(str(folder), num_labels=3, seed=1, log=notes.append)
    assert len(tokenizer) == model.config.vocab_size
    encoder = [k for k in pretrained.params if k.startswith("bert.")]
    assert sorted(encoder) == sorted(k for k in model.params if k.startswith("bert."))
    for name in encoder:
        a, b = model.params[name], pretrained.params[name]
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"{name} changed on loading"
    assert not any(k.startswith("cls.") for k in model.params)          # the MLM/NSP heads are dropped
    w, bias = model.params["classifier.weight"], model.params["classifier.bias"]
    assert w.shape == (3, 32) and not bias.any()
    assert 0.01 < float(w.std()) < 0.03                                  # BERT's init, std 0.02
    assert any("classifier" in n for n in notes)                         # the user is told the head is new
    # another seed: another head, the same encoder
    model2, _ = models.load_for_classification(str(folder), num_labels=3, seed=2, log=lambda s: None)
    assert not np.array_equal(model2.params["classifier.weight"], w)
    assert all(np.array_equal(model2.params[k], model.params[k]) for k in encoder)
    # the run folder that holds checkpoint/ works as well
    model3, _ = models.load_for_classification(str(folder.parent), num_labels=3, seed=1, log=lambda s: None)
    assert all(np.array_equal(model3.params[k], model.params[k]) for k in model.params)
    # --init random --like FOLDER: the same architecture and vocabulary, none of the weights
    rand, rand_tok = models.load_for_classification("random", num_labels=3, seed=1, like=str(folder), log=lambda s: None)
    assert rand.config == model.config and len(rand_tok) == len(tokenizer)
    assert not np.array_equal(rand.params["bert.pooler.dense.weight"], model.params["bert.pooler.dense.weight"])


def test_minilm_encoder_loads_bit_identical():
    from bert_from_scratch.pretrained import model_folder

    model, tokenizer = models.load_for_classification("minilm", num_labels=2, seed=0, log=lambda s: None)
    weights = load_safetensors(model_folder("all-MiniLM-L6-v2") / "model.safetensors")
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert tokenizer.cls_token_id == 101 and tokenizer.sep_token_id == 102
    loaded = 0
    for name, value in weights.items():
        if name.endswith("position_ids"):
            continue
        assert model.params["bert." + name].tobytes() == value.astype(np.float32).tobytes(), name
        loaded += 1
    assert loaded == len(model.params) - 2                               # all but classifier.weight/.bias


# ----------------------------------------------------------------------------------------------
# metrics and batching
# ----------------------------------------------------------------------------------------------
def test_metrics_match_hand_counts():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    cm = metrics.confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert metrics.accuracy_from_confusion(cm) == pytest.approx(4 / 6)
    # F1 per class: 2*2/(4+0+1), 2*1/(2+1+1), 2*1/(2+1+0)
    expected = (0.8 + 0.5 + 2 / 3) / 3
    assert metrics.macro_f1_from_confusion(cm) == pytest.approx(expected)
    # a class that is neither true nor predicted does not count (scikit-learn's macro average)
    assert metrics.macro_f1_from_confusion(metrics.confusion_matrix(y_true, y_pred, 5)) == pytest.approx(expected)
    # planted wrong answers are told apart: micro-F1 (= accuracy) and a mean over all 5 classes
    assert abs(metrics.accuracy_from_confusion(cm) - expected) > 0.01
    assert abs(expected * 3 / 5 - expected) > 0.01
    with pytest.raises(ValueError, match=r"y_pred holds labels outside \[0, 3\)"):
        metrics.confusion_matrix(y_true, [0, 0, 0, 1, 1, 3], 3)
    # a classifier that always says class 0 has accuracy 1/2 but macro-F1 only 2/9
    cm_majority = metrics.confusion_matrix(y_true, [0] * 6, 3)
    assert metrics.accuracy_from_confusion(cm_majority) == pytest.approx(0.5)
    assert metrics.macro_f1_from_confusion(cm_majority) == pytest.approx((2 * 3 / (6 + 3)) / 3)


def test_length_bucketed_batches_cover_every_example_once_with_less_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, 1000)
    batches = examples.length_bucketed_batches(lengths, 32, np.random.default_rng(1), bucket_batches=10)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    assert all(1 <= len(b) <= 32 for b in batches)
    again = examples.length_bucketed_batches(lengths, 32, np.random.default_rng(1), bucket_batches=10)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))

    def padded_tokens(bs):
        return sum(len(b) * lengths[b].max() for b in bs)

    plain = examples.length_bucketed_batches(lengths, 32, np.random.default_rng(1), bucket_batches=1)
    assert padded_tokens(batches) < 0.75 * padded_tokens(plain)


def test_pairs_are_encoded_with_segment_ids(tok):
    enc = examples.encode_examples(tok, [Example("the movie", 1, "was good")], max_length=16, num_labels=2)
    assert enc.token_type_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert enc.input_ids[0][0] == tok.cls_token_id and enc.input_ids[0][-1] == tok.sep_token_id
    with pytest.raises(ft.FinetuneError, match=r"train\[0\]: label 2 is not an integer in \[0, 2\)"):
        examples.encode_examples(tok, [Example("the movie", 2)], max_length=16, num_labels=2, what="train")


# ----------------------------------------------------------------------------------------------
# command line: own CSV files, sentence pairs, predict, clear errors
# ----------------------------------------------------------------------------------------------
def parse(add, argv):
    return add(argparse.ArgumentParser()).parse_args(argv)


def write_csv(path, header, rows):
    path.write_text("\n".join([header] + rows) + "\n", encoding="utf-8")
    return path


def test_cli_finetune_on_pair_csv_then_predict(tmp_path, capsys, pretraining_checkpoint, monkeypatch):
    folder, _ = pretraining_checkpoint
    monkeypatch.setenv("BERT_FROM_SCRATCH_COMPILE_AHEAD", "1")     # as outside the tests: kernels compile ahead

    def rows(examples):
        return [f"{e.text},{e.text_b},{'pos' if e.label else 'neg'}" for e in examples]

    train = write_csv(tmp_path / "train.csv", "text,text_b,label", rows(keyword_examples(64, 1, pairs=True)))
    dev = write_csv(tmp_path / "dev.csv", "text,text_b,label", rows(keyword_examples(32, 2, pairs=True)))
    out = tmp_path / "run"
    args = parse(cli_ft.add_finetune_arguments, ["--init", str(folder), "--train", str(train), "--dev", str(dev),
                                             "--epochs", "1", "--batch-size", "16", "--max-length", "24",
                                             "--out", str(out), "--no-progress"])
    assert cli_ft.cli_finetune(args) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "kernels: Numba compiled in 2 background processes" in captured.out
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    assert json.loads((out / "best" / "training_args.json").read_text())["max_length"] == 24
    assert json.loads((out / "results.json").read_text())["confusion_split"] == "dev"   # no --test: dev

    args = parse(cli_ft.add_predict_arguments, ["--checkpoint", str(out), "the movie", "--pair", "was great"])
    assert cli_ft.cli_predict(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    label, probs, text = line.split("\t")
    assert label in ("neg", "pos") and text == "the movie" and "neg " in probs and "pos " in probs

    args = parse(cli_ft.add_predict_arguments, ["--checkpoint", str(tmp_path / "nowhere"), "text"])
    assert cli_ft.cli_predict(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bert-from-scratch: error:") and "nowhere" in err and len(err.splitlines()) == 1
    # a pretraining checkpoint has no classifier: predict says so
    args = parse(cli_ft.add_predict_arguments, ["--checkpoint", str(folder), "text"])
    assert cli_ft.cli_predict(args) == 2
    assert "not a fine-tuned model" in capsys.readouterr().err


BAD_CSVS = {
    "missing label column": ("text,category\na,pos\nb,neg\n", None, "missing column 'label'"),
    "wrong field count": ("text,label\na,pos\nb,neg,extra\n", None, "line 3: 3 fields, the header has 2"),
    "empty file": ("", None, "the file is empty"),
    "header only": ("text,label\n", None, "a header but no examples"),
    "empty text": ("text,label\na,pos\n  ,neg\n", None, "line 3: empty text"),
    "one label only": ("text,label\na,pos\nb,pos\n", None, "at least 2 labels"),
    "dev label unknown": ("text,label\na,pos\nb,neg\n", "text,label\nc,meh\n", "label 'meh' is not one of"),
    "pairs in train, not in dev": ("text,text_b,label\na,b,pos\nc,d,neg\n", "text,label\nc,pos\n", "disagree"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_bad_csv_gives_one_clear_line(case, tmp_path, capsys, pretraining_checkpoint):
    train_text, dev_text, expected = BAD_CSVS[case]
    train = tmp_path / "train.csv"
    train.write_text(train_text, encoding="utf-8")
    dev = tmp_path / "dev.csv"
    dev.write_text(dev_text or "text,label\nx,pos\ny,neg\n", encoding="utf-8")
    args = parse(cli_ft.add_finetune_arguments, ["--init", str(pretraining_checkpoint[0]), "--train", str(train),
                                             "--dev", str(dev), "--out", str(tmp_path / "out"), "--no-progress"])
    assert cli_ft.cli_finetune(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("bert-from-scratch: error:"), err
    assert expected in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, expected", [
    (["--train", "{tmp}/train.csv"], "--train and --dev go together"),
    (["--train", "{tmp}/none.csv", "--dev", "{tmp}/train.csv"], "does not exist"),
    (["--init", "{tmp}/no-such-checkpoint"], "not 'minilm', 'random' or an existing checkpoint folder"),
    (["--init", "{tmp}", "--train", "{tmp}/train.csv", "--dev", "{tmp}/train.csv"], "no config.json"),
])
def test_cli_usage_errors(argv, expected, tmp_path, capsys):
    write_csv(tmp_path / "train.csv", "text,label", ["a,pos", "b,neg"])
    args = parse(cli_ft.add_finetune_arguments, [a.format(tmp=tmp_path) for a in argv] +
                 ["--out", str(tmp_path / "out"), "--no-progress"])
    assert cli_ft.cli_finetune(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err, err
