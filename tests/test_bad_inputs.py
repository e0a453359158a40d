"""Bad input is refused with one clear line, never a traceback from deep inside NumPy or csv, never a hang.

Each checker is also shown to accept the valid input next to the bad one, so a validator that
refuses everything fails here too. The command-line cases run the real console script in a subprocess.
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from bert_from_scratch.checkpoint import CheckpointError
from bert_from_scratch.config import MAX_PARAMETERS, BertConfig, ConfigError
from bert_from_scratch.data import corpora, labeled
from bert_from_scratch.data.corpora import CorpusError, check_corpus_text, decode_text, load_documents
from bert_from_scratch.data.labeled import read_classification_csv
from bert_from_scratch.data.text import SPECIAL_TOKENS
from bert_from_scratch.data.tokenizer import Tokenizer
from bert_from_scratch.model import BertForPreTraining, BertForSequenceClassification

WORDS = "the a movie film was is very good bad plot actors story and of it".split()
TOKENS = list(SPECIAL_TOKENS) + WORDS
TINY = dict(vocab_size=len(TOKENS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=32)


def cli(*argv, timeout=180):
    """Run the console script; return (exit status, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "bert_from_scratch", *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "MPLBACKEND": "Agg"})
    return proc.returncode, proc.stdout, proc.stderr


def cli_error(*argv, timeout=180) -> str:
    """Run a command that must fail: exit 2, one line on stderr, no traceback; return the line."""
    code, _, err = cli(*argv, timeout=timeout)
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bert-from-scratch: error:"), err
    return lines[0]


def pretraining_folder(path, **config_edits):
    """A checkpoint folder as `pretrain` writes it (config.json, model.safetensors, vocab.txt), then
    ``config_edits`` written into its config.json as they are (None -> null)."""
    BertForPreTraining(BertConfig(**TINY), seed=0).save_pretrained(path)
    Tokenizer(TOKENS).save_vocab(path / "vocab.txt")
    edit_config(path, **config_edits)
    return path


def classifier_folder(path, **config_edits):
    """A fine-tuned-looking folder: a 2-label classifier ("neg", "pos") with vocab.txt."""
    model = BertForSequenceClassification(BertConfig(**TINY), num_labels=2, seed=0)
    model.label_names = ["neg", "pos"]
    model.save_pretrained(path)
    Tokenizer(TOKENS).save_vocab(path / "vocab.txt")
    edit_config(path, **config_edits)
    return path


def edit_config(folder, **edits):
    if edits:
        d = json.loads((folder / "config.json").read_text())
        d.update(edits)
        (folder / "config.json").write_text(json.dumps(d))


# ------------------------------------------------------------------------------ 1. config.json fields

BAD_FIELDS = [
    ("layer_norm_eps", None, "layer_norm_eps must be a positive finite number"),
    ("layer_norm_eps", "1e-12", "layer_norm_eps must be a positive finite number"),
    ("layer_norm_eps", -1e-12, "layer_norm_eps must be positive"),
    ("layer_norm_eps", 0, "layer_norm_eps must be positive"),
    ("layer_norm_eps", math.inf, "layer_norm_eps must be a positive finite number"),
    ("layer_norm_eps", math.nan, "layer_norm_eps must be a positive finite number"),
    ("hidden_size", "128", "hidden_size must be a positive integer; got '128' \\(str\\)"),
    ("hidden_size", 32.0, "hidden_size must be a positive integer; got 32.0"),
    ("num_hidden_layers", True, "num_hidden_layers must be a positive integer; got True \\(bool\\)"),
    ("num_attention_heads", None, "num_attention_heads must be a positive integer; got None"),
    ("intermediate_size", -64, "intermediate_size must be a positive integer; got -64"),
    ("max_position_embeddings", [32], "max_position_embeddings must be a positive integer; got \\[32\\] \\(list\\)"),
    ("type_vocab_size", 0, "type_vocab_size must be a positive integer"),
    ("vocab_size", 0, "vocab_size must be a positive integer"),
    ("hidden_dropout_prob", None, "hidden_dropout_prob must be a number in \\[0, 1\\); got None"),
    ("hidden_dropout_prob", "0.1", "hidden_dropout_prob must be a number in \\[0, 1\\); got '0.1' \\(str\\)"),
    ("hidden_dropout_prob", True, "hidden_dropout_prob must be a number in \\[0, 1\\); got True \\(bool\\)"),
    ("hidden_dropout_prob", 1.0, r"hidden_dropout_prob must be in \[0, 1\); got 1.0"),
    ("attention_probs_dropout_prob", -0.1, r"attention_probs_dropout_prob must be in \[0, 1\); got -0.1"),
    ("attention_probs_dropout_prob", math.nan, r"attention_probs_dropout_prob must be in \[0, 1\); got nan"),
    ("initializer_range", 0, "initializer_range must be a positive finite number .* got 0"),
    ("initializer_range", -0.02, "initializer_range must be a positive finite number .* got -0.02"),
    ("initializer_range", math.inf, "initializer_range must be a positive finite number .* got inf"),
    ("initializer_range", None, "initializer_range must be a positive finite number .* got None"),
    ("hidden_act", 5, r"hidden_act must be a string \('gelu'\); got 5"),
    ("hidden_act", None, "hidden_act must be a string"),
    ("hidden_act", "relu", "hidden_act 'relu' is not supported"),
    ("position_embedding_type", None, "position_embedding_type must be the string 'absolute'; got None"),
    ("position_embedding_type", "relative_key", "position_embedding_type 'relative_key' is not supported"),
    ("is_decoder", "false", "is_decoder must be true or false; got 'false' \\(str\\)"),
    ("is_decoder", True, "is_decoder=True is not supported"),
    ("pad_token_id", None, r"pad_token_id must be an integer in \[0, vocab_size=20\); got None"),
    ("pad_token_id", 20, r"pad_token_id must be an integer in \[0, vocab_size=20\); got 20"),
    ("pad_token_id", -1, "pad_token_id must be an integer"),
    ("vocab_size", 10 ** 9, "model of 3.3e\\+10 parameters .*vocab_size 1000000000.* more than 4,294,967,296"),
]


@pytest.mark.parametrize("field, value, message", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS])
def test_every_config_field_is_checked_when_built_and_when_read(tmp_path, field, value, message):
    assert len(TOKENS) == 20
    with pytest.raises(ConfigError, match=message) as info:
        BertConfig(**{**TINY, field: value})
    assert field in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=message):
        BertConfig.from_dict({"model_type": "bert", **TINY, field: value})
    if not (isinstance(value, float) and not math.isfinite(value)):          # JSON has no NaN/inf proper
        path = tmp_path / "config.json"
        path.write_text(json.dumps({**TINY, field: value}))
        with pytest.raises(ConfigError, match=message):
            BertConfig.from_json_file(path)


def test_valid_configs_are_accepted():
    """The checks refuse only what is wrong: defaults, BERT-base, HF-style numbers, NumPy floats."""
    assert BertConfig().num_parameters() == 110_106_428                     # BERT-base with its heads
    cfg = BertConfig(**TINY)
    model = BertForPreTraining(cfg)
    assert cfg.num_parameters() == sum(int(np.prod(p.shape)) for p in model.params.values())
    ok = BertConfig(**TINY, hidden_dropout_prob=0, attention_probs_dropout_prob=np.float32(0.1),
                    layer_norm_eps=1, initializer_range=1e-3, pad_token_id=len(TOKENS) - 1, is_decoder=False)
    assert ok.hidden_dropout_prob == 0
    assert BertConfig.from_dict(BertConfig(**TINY).to_dict()) == cfg
    large = BertConfig(vocab_size=119547, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                       intermediate_size=4096)                             # a multilingual BERT-large
    assert large.num_parameters() < MAX_PARAMETERS


def test_validate_catches_a_field_changed_after_building():
    cfg = BertConfig(**TINY)
    cfg.validate()
    cfg.layer_norm_eps = None
    with pytest.raises(ConfigError, match="layer_norm_eps"):
        cfg.validate()


def test_config_json_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"vocab_size": ' + "9" * 5000 + "}")                   # over Python's int-string limit
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        BertConfig.from_json_file(path)
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        BertConfig.from_json_file(path)


@pytest.mark.parametrize("edit, words", [
    ({"layer_norm_eps": None}, ["layer_norm_eps", "None"]),
    ({"hidden_size": "128"}, ["hidden_size", "'128'"]),
    ({"hidden_dropout_prob": 1.5}, ["hidden_dropout_prob", "1.5"]),
    ({"hidden_act": None}, ["hidden_act"]),
])
def test_a_folder_with_a_bad_config_names_the_file(tmp_path, edit, words):
    folder = pretraining_folder(tmp_path / "ck", **edit)
    with pytest.raises(CheckpointError) as info:
        BertForPreTraining.from_pretrained(folder)
    message = str(info.value)
    assert str(folder / "config.json") in message and all(w in message for w in words), message
    with pytest.raises(CheckpointError, match="config.json"):
        BertForSequenceClassification.from_pretrained(folder)


@pytest.mark.parametrize("edit, words", [
    ({"layer_norm_eps": None}, ["config.json", "layer_norm_eps", "None"]),
    ({"hidden_size": "128"}, ["config.json", "hidden_size", "'128'"]),
])
def test_cli_fill_mask_with_a_bad_config(tmp_path, edit, words):
    folder = pretraining_folder(tmp_path / "ck", **edit)
    line = cli_error("fill-mask", "--checkpoint", folder, "the [MASK] was good")
    assert all(w in line for w in words), line


def test_cli_fill_mask_with_a_valid_config(tmp_path):
    folder = pretraining_folder(tmp_path / "ck")
    code, out, err = cli("fill-mask", "--checkpoint", folder, "the [MASK] was good", "--top-k", "2")
    assert code == 0, err
    assert sum("%" in line for line in out.splitlines()) == 2


# ------------------------------------------------------------------------------ 2. long CSV fields

def test_a_200000_character_review_loads_and_the_csv_limit_is_restored(tmp_path):
    f = tmp_path / "long.csv"
    review = "a very long review " * 10_527                                     # 200,013 characters
    f.write_text(f'text,label\n"{review}",pos\nshort,neg\n', encoding="utf-8")
    before = csv.field_size_limit()
    data = read_classification_csv(f)
    assert csv.field_size_limit() == before
    assert len(data.examples[0].text) == len(review.strip()) > 200_000
    assert data.label_names == ["neg", "pos"] and [e.label for e in data.examples] == [1, 0]
    tok = Tokenizer(TOKENS)
    from bert_from_scratch.data.classification import encode_examples
    encoded = encode_examples(tok, data.examples, max_length=16, num_labels=2)
    assert encoded.lengths[0] == 16


def test_any_csv_error_names_the_file_and_line(tmp_path, monkeypatch):
    monkeypatch.setattr(labeled, "CSV_FIELD_SIZE_LIMIT", 1000)          # force csv.Error: field larger than limit
    f = tmp_path / "bad.csv"
    f.write_text("text,label\nfine,0\n" + "x" * 2000 + ",1\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3: not a valid CSV record: field larger than field limit"):
        read_classification_csv(f)
    f.write_text("text,label\nfine,0\n" + "x" * 900 + ",1\n")                # under the limit: loads
    assert len(read_classification_csv(f).examples) == 2


def test_unclosed_quote_and_non_utf8_name_the_line(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text('text,label\nok,1\n"unclosed,0\nmore,1\nfoo,0\n')
    with pytest.raises(ValueError, match=r"bad.csv, line 3: 1 fields, the header has 2 \(the record runs from "
                                         r"line 3 to line 5: an unclosed double quote\?\)"):
        read_classification_csv(f)
    f.write_bytes(b"text,label\nok,1\nok,0\nbad \xff here,0\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 4: the file is not UTF-8 text"):
        read_classification_csv(f)


# ------------------------------------------------------------------------------ 3. id2label with gaps

@pytest.mark.parametrize("id2label, words", [
    ({"0": "neg", "2": "pos"}, ["missing key(s) '1'", "extra key(s) '2'"]),
    ({"neg": "neg", "pos": "pos"}, ["missing key(s) '0', '1'", "extra key(s) 'neg', 'pos'"]),
    ({"0": "neg"}, ["missing key(s) '1'"]),
    ({"0": "neg", "1": "pos", "2": "meh"}, ["extra key(s) '2'"]),
    (["neg", "pos"], ["id2label must be an object"]),
    ({"0": "pos", "1": "pos"}, ["names two or more outputs 'pos'"]),
    ({"0": "neg", "1": None}, ["id2label['1'] must be a non-empty label name"]),
])
def test_id2label_must_name_every_output(tmp_path, id2label, words):
    folder = classifier_folder(tmp_path / "clf", id2label=id2label)
    with pytest.raises(CheckpointError) as info:
        BertForSequenceClassification.from_pretrained(folder)
    message = str(info.value)
    assert str(folder / "config.json") in message and all(w in message for w in words), message
    assert "\n" not in message


def test_valid_id2label_is_used_and_a_base_model_id2label_is_ignored(tmp_path):
    folder = classifier_folder(tmp_path / "clf")
    assert BertForSequenceClassification.from_pretrained(folder).label_names == ["neg", "pos"]
    edit_config(folder, id2label={"0": "bad", "1": 7})                       # a number is a name
    assert BertForSequenceClassification.from_pretrained(folder).label_names == ["bad", "7"]
    # a pretraining folder has no classifier: its id2label describes nothing and is not checked (as before)
    base = pretraining_folder(tmp_path / "base", id2label={"0": "LABEL_0", "2": "LABEL_2"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BertForSequenceClassification.from_pretrained(base, num_labels=3)
    assert model.num_labels == 3 and not getattr(model, "label_names", None)


def test_cli_predict_with_an_id2label_gap(tmp_path):
    folder = classifier_folder(tmp_path / "clf", id2label={"0": "neg", "2": "pos"})
    line = cli_error("predict", "--checkpoint", folder, "the movie was good")
    assert "config.json" in line and "id2label" in line and "missing key(s) '1'" in line, line
    edit_config(folder, id2label={"0": "neg", "1": "pos"})
    code, out, err = cli("predict", "--checkpoint", folder, "the movie was good")
    assert code == 0, err
    assert out.split("\t")[0] in ("neg", "pos")


# ------------------------------------------------------------------------------ 4. labels are a set

def test_integer_labels_are_the_values_observed(tmp_path):
    f = tmp_path / "sparse.csv"
    f.write_text("text,label\ngood,0\nbad,999999999\nfine,0\n")
    data = read_classification_csv(f)
    assert data.label_names == ["0", "999999999"]
    assert [e.label for e in data.examples] == [0, 1, 0]
    f.write_text("text,label\na,10\nb,2\nc,1\nd,2\n")                          # numeric order, not text order
    data = read_classification_csv(f)
    assert data.label_names == ["1", "2", "10"] and [e.label for e in data.examples] == [2, 1, 0, 1]
    g = tmp_path / "dev.csv"
    g.write_text("text,label\na,10\nb,5\n")
    with pytest.raises(ValueError, match=r"dev.csv, line 3: label '5' is not one of \['1', '2', '10'\]"):
        read_classification_csv(g, label_names=data.label_names)


def test_finetune_data_with_labels_0_and_999999999(tmp_path):
    """The CLI's data step builds 2 label names (it used to build a billion: a MemoryError or a hang)."""
    from bert_from_scratch.cli.finetune import _load_data

    train, dev = tmp_path / "train.csv", tmp_path / "dev.csv"
    train.write_text("text,label\nthe movie was good,0\nthe movie was bad,999999999\n")
    dev.write_text("text,label\nthe film was good,0\nthe film was bad,999999999\n")

    class Args:
        pass
    args = Args()
    args.train, args.dev, args.test = str(train), str(dev), None
    data = _load_data(args)
    assert data.label_names == ["0", "999999999"] and data.num_labels == 2
    assert [e.label for e in data.dev] == [0, 1]


# ------------------------------------------------------------------------------ 5. corpora that are not text

def test_random_bytes_are_refused(tmp_path):
    f = tmp_path / "random.txt"
    f.write_bytes(os.urandom(200_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                       # refused before any warning
        with pytest.raises(CorpusError, match=r"random.txt is not text: .* bytes are not valid UTF-8"):
            load_documents(f)
    folder = tmp_path / "randoms"
    folder.mkdir()
    for i in range(40):
        (folder / f"{i:02d}.txt").write_bytes(os.urandom(5000))
    (folder / "real.txt").write_text("A real sentence. And another one.\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CorpusError, match=r"randoms is not text: 40 of its 41 files.* are undecodable, "
                                              r"e.g. .*00.txt"):
            load_documents(folder)


@pytest.mark.parametrize("content, words", [
    (" ".join(str(i * 7919 % 10007) for i in range(3000)).encode(), ["almost no words", "0%"]),
    (os.urandom(20_000).hex(" ").encode(), ["almost no words"]),
    (("It was a good movie. " * 200).encode("utf-16"), ["almost no words", "NUL", "UTF-16"]),
])
def test_text_without_words_is_refused(tmp_path, content, words):
    f = tmp_path / "corpus.txt"
    f.write_bytes(content)
    with pytest.raises(CorpusError) as info:
        load_documents(f)
    assert all(w in str(info.value) for w in words), info.value


def test_latin1_text_still_loads_with_its_warning(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.txt").write_text(f"Document {i}. It is plain English text.\n")
    (folder / "latin1.txt").write_bytes("Le café de la gare était fermé. Où aller?".encode("latin-1"))
    with pytest.warns(UserWarning, match="latin1.txt is not valid UTF-8"):
        docs = load_documents(folder)
    assert len(docs) == 6 and "café" in docs[-1].text
    single = tmp_path / "latin1.txt"                                         # a whole corpus in Latin-1
    single.write_bytes(("Über die Brücke gehen wir. Schön ist es dort.\n\n" * 50).encode("latin-1"))
    with pytest.warns(UserWarning, match="not valid UTF-8"):
        assert len(load_documents(single)) == 50
    tiny = tmp_path / "tiny.txt"                                              # a dozen words is a corpus
    tiny.write_text("Doc one line one.\nDoc one line two\n\n\nDoc two. Two sentences.\n")
    assert len(load_documents(tiny)) == 2


def test_the_real_corpora_pass_the_checks_with_a_margin():
    from pydoc_data.topics import topics

    from bert_from_scratch.data import fetch

    with fetch.open_wheel("bbc") as zf:
        bbc = [decode_text(zf.read(n), n) for n in sorted(zf.namelist())
               if n.startswith(corpora.BBC_PREFIX) and n.endswith(".txt")]
    assert len(bbc) == 2225 and [f.name for f in bbc if f.bad_bytes] == [corpora.BBC_PREFIX + "sports/199.txt"]
    assert not any(f.undecodable for f in bbc)
    check_corpus_text("bbc", bbc)
    docs = [decode_text(topics[k].encode("utf-8"), k) for k in sorted(topics)]
    check_corpus_text("python-docs", docs)
    # the margin: the word share of each is far above MIN_WORD_SHARE
    for files in (bbc, docs):
        text = "".join(f.text for f in files)
        share = sum(map(len, corpora._WORD.findall(text))) / len("".join(text.split()))
        assert share > 2 * corpora.MIN_WORD_SHARE


def test_cli_pretrain_on_random_bytes(tmp_path):
    f = tmp_path / "random.txt"
    f.write_bytes(os.urandom(200_000))
    line = cli_error("pretrain", "--corpus", f, "--steps", "2", "--out", tmp_path / "out", "--no-progress")
    assert "random.txt is not text" in line and "not valid UTF-8" in line, line


@pytest.mark.skipif(not os.path.exists("/dev/urandom"), reason="no /dev/urandom")
def test_a_device_is_refused_at_once_not_read_forever():
    with pytest.raises(CorpusError, match="/dev/urandom is neither a regular file nor a folder"):
        load_documents("/dev/urandom")
    with pytest.raises(ValueError, match="/dev/urandom is not a regular file"):
        read_classification_csv("/dev/urandom")
