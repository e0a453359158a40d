"""bert_from_scratch.pipeline against transformers.pipeline on the same folders: same labels, scores within 1e-5.

The folders are tiny random-weight Hugging Face models saved by ``transformers`` itself (so ``tokenizer.json``
and its config are Hugging Face's own), plus all-MiniLM-L6-v2's real folder for feature extraction. Question
answering has no pipeline in transformers 5: our decoding is compared with the function its pipeline
used (``select_starts_ends``, kept in ``document_question_answering``) on Hugging Face's own logits.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import requires_transformers

pytestmark = requires_transformers

WORDS = ("the a of to and in is was he she it for on with as his her at by that this market rose fell sharply "
         "paris london john smith mary lives works city new york bank shares price today company said year "
         "where who what does").split()
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG"]
TEXTS = ["John Smith lives in Paris.", "the market rose sharply today", "Mary works at the bank of new york, "
         "and she said shares fell!", "Zyx quux lives in London"]
CONTEXT = ("John Smith lives in Paris. Mary works at the bank of new york. The market rose sharply today and "
           "shares of the company fell. He said the price was new.")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    import torch
    from transformers import (BertConfig, BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification,
                              BertForTokenClassification, BertTokenizerFast)

    root = tmp_path_factory.mktemp("hf")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "?"] + list(WORDS) + \
        ["##s", "##ly", "##ed", "##ing", "z", "##y", "##x", "q", "##u"]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab=str(root / "vocab.txt"), model_max_length=32)
    assert tok.convert_tokens_to_ids("[CLS]") == 2 and tok.convert_tokens_to_ids("market") == vocab.index("market")
    cfg = dict(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=32, max_position_embeddings=32)
    out = {}
    torch.manual_seed(0)
    for name, cls, extra in (("mlm", BertForMaskedLM, {}),
                             ("cls", BertForSequenceClassification,
                              {"num_labels": 3, "id2label": {0: "negative", 1: "neutral", 2: "positive"},
                               "label2id": {"negative": 0, "neutral": 1, "positive": 2}}),
                             ("ner", BertForTokenClassification,
                              {"num_labels": len(NER_LABELS), "id2label": dict(enumerate(NER_LABELS)),
                               "label2id": {n: i for i, n in enumerate(NER_LABELS)}}),
                             ("qa", BertForQuestionAnswering, {})):
        model = cls(BertConfig(**cfg, **extra)).eval()
        with torch.no_grad():                              # bigger weights: peaked, varied scores to compare
            for p in model.parameters():
                if p.ndim == 2:
                    p.mul_(20.0)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    return out


def hf_pipeline(task, folder, **kw):
    from transformers import pipeline

    return pipeline(task, model=str(folder), device="cpu", **kw)


def assert_same(ours, theirs, path="out"):
    """Same structure and keys, same strings and ints, floats within 1e-5."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), f"{path}: {type(ours).__name__} where a dict was expected"
        assert set(ours) == set(theirs), f"{path}: keys {set(ours)} vs {set(theirs)}"
        for k in theirs:
            assert_same(ours[k], theirs[k], f"{path}.{k}")
    elif isinstance(theirs, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(theirs), f"{path}: lengths differ"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(theirs, (float, np.floating)):
        assert abs(float(ours) - float(theirs)) <= 1e-5, f"{path}: {ours} vs {theirs}"
    else:
        assert ours == theirs, f"{path}: {ours!r} vs {theirs!r}"


def test_assert_same_rejects_a_planted_difference():
    assert_same([{"label": "a", "score": 0.5}], [{"label": "a", "score": 0.500001}])
    for bad in ([{"label": "b", "score": 0.5}], [{"label": "a", "score": 0.5001}], [{"label": "a"}], []):
        with pytest.raises(AssertionError):
            assert_same(bad, [{"label": "a", "score": 0.5}])


def test_fill_mask_equals_hugging_face(folders):
    from bert_from_scratch import pipeline

    ours, theirs = pipeline("fill-mask", model=folders["mlm"]), hf_pipeline("fill-mask", folders["mlm"])
    for inputs in ("the market [MASK] sharply.", ["[MASK] lives in paris", "the [MASK] of [MASK] york"]):
        assert_same(ours(inputs), theirs(inputs))
    assert_same(ours("the [MASK] rose", top_k=3), theirs("the [MASK] rose", top_k=3))


def test_text_classification_equals_hugging_face(folders):
    from bert_from_scratch import pipeline

    ours, theirs = pipeline("sentiment-analysis", model=folders["cls"]), hf_pipeline("text-classification",
                                                                                      folders["cls"])
    assert_same(ours(TEXTS[0]), theirs(TEXTS[0]))
    assert_same(ours(TEXTS), theirs(TEXTS))
    assert_same(ours(TEXTS, top_k=None), theirs(TEXTS, top_k=None))
    assert_same(ours(TEXTS[1], top_k=2), theirs(TEXTS[1], top_k=2))
    pair = {"text": TEXTS[0], "text_pair": TEXTS[1]}
    assert_same(ours(pair), theirs(pair))
    long = " ".join(["the market rose"] * 30)                      # 90 pieces: truncated to the model's 32
    assert_same(ours(long), theirs(long, truncation=True))


@pytest.mark.parametrize("strategy", ["none", "simple"])
def test_token_classification_equals_hugging_face(folders, strategy):
    from bert_from_scratch import pipeline

    ours = pipeline("ner", model=folders["ner"], aggregation_strategy=strategy)
    theirs = hf_pipeline("token-classification", folders["ner"], aggregation_strategy=strategy)
    got, want = ours(TEXTS), theirs(TEXTS)
    assert sum(map(len, want)) > 3                                    # the comparison covers some entities
    assert_same(got, want)
    assert_same(ours(TEXTS[2], batch_size=1), theirs(TEXTS[2]))


def test_feature_extraction_equals_hugging_face_on_minilm():
    from bert_from_scratch import pipeline
    from bert_from_scratch.pretrained import model_folder

    folder = model_folder("all-MiniLM-L6-v2")
    ours, theirs = pipeline("feature-extraction", model=folder), hf_pipeline("feature-extraction", folder)
    got, want = ours(TEXTS[:2], batch_size=2), theirs(TEXTS[:2])
    assert np.asarray(got[1]).shape == np.asarray(want[1]).shape == (1, 7, 384)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    emb = pipeline("sentence-embeddings", model=folder)(TEXTS[:2])
    assert emb.shape == (2, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1.0)


def test_question_answering_decoding_equals_hugging_face(folders):
    """Hugging Face's tokenizer windows + its BertForQuestionAnswering logits + its select_starts_ends,
    against our pipeline on the same folder, with windows (max_seq_len 24, doc_stride 8)."""
    import torch
    from transformers import BertForQuestionAnswering, BertTokenizerFast
    from transformers.pipelines.document_question_answering import select_starts_ends

    from bert_from_scratch import pipeline

    hf_tok = BertTokenizerFast.from_pretrained(str(folders["qa"]))
    hf_model = BertForQuestionAnswering.from_pretrained(str(folders["qa"])).eval()
    question = "where does john smith live?"
    for top_k in (1, 3):
        enc = hf_tok(question, CONTEXT, truncation="only_second", max_length=24, stride=8,
                     return_overflowing_tokens=True, return_offsets_mapping=True, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = hf_model(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"],
                           attention_mask=enc["attention_mask"])
        want = []
        for w in range(enc["input_ids"].shape[0]):
            seq = enc.sequence_ids(w)
            p_mask = np.array([s != 1 for s in seq], dtype=np.int64)
            p_mask[0] = 0
            starts, ends, scores, _ = select_starts_ends(out.start_logits[w:w + 1].numpy(),
                                                         out.end_logits[w:w + 1].numpy(), p_mask,
                                                         enc["attention_mask"][w].numpy(), top_k=top_k,
                                                         max_answer_len=15)
            offs = enc["offset_mapping"][w].tolist()
            for s, e, sc in zip(starts, ends, scores):
                a, b = offs[s][0], offs[e][1]
                want.append({"score": float(sc), "start": a, "end": b, "answer": CONTEXT[a:b]})
        assert enc["input_ids"].shape[0] > 3                             # several windows
        want = sorted(want, key=lambda x: x["score"], reverse=True)[:top_k]
        got = pipeline("question-answering", model=folders["qa"])(question=question, context=CONTEXT, top_k=top_k,
                                                                   max_seq_len=24, doc_stride=8)
        assert_same(got, want[0] if top_k == 1 else want)


def test_bad_inputs_are_refused_in_one_line(folders):
    from bert_from_scratch import pipeline
    from bert_from_scratch.pipelines import PipelineError

    with pytest.raises(PipelineError, match="unknown task 'translation'"):
        pipeline("translation", model=folders["mlm"])
    fill = pipeline("fill-mask", model=folders["mlm"])
    with pytest.raises(PipelineError, match="no \\[MASK\\]"):
        fill("the market rose")
    with pytest.raises(PipelineError, match="truncation cut it off"):
        fill(" ".join(["the"] * 40) + " [MASK]")
    with pytest.raises(PipelineError, match="empty list"):
        fill([])
    with pytest.raises(PipelineError, match="aggregation_strategy"):
        pipeline("ner", model=folders["ner"])("john", aggregation_strategy="max")


def test_our_pretraining_checkpoint_fills_masks_like_hugging_face(tmp_path):
    """A folder written by our BertForPreTraining + Tokenizer: our fill-mask equals transformers' on it."""
    from bert_from_scratch import BertConfig, BertForPreTraining, Tokenizer, pipeline

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + list(WORDS)
    tok = Tokenizer(vocab)
    model = BertForPreTraining(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=32, max_position_embeddings=24),
                               seed=3)
    for name, p in model.params.items():
        if p.ndim == 2:
            p *= 20.0
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path, model_max_length=24)
    text = "the company [MASK] shares today."
    assert_same(pipeline("fill-mask", model=tmp_path)(text), hf_pipeline("fill-mask", tmp_path)(text))


def test_cli_predict_runs_the_pipelines(folders, capsys):
    import json

    from bert_from_scratch.cli import main

    assert main(["predict", "--task", "fill-mask", "--checkpoint", str(folders["mlm"]), "the [MASK] rose"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["text"] == "the [MASK] rose" and len(line["output"]) == 5
    assert main(["predict", "--task", "question-answering", "--checkpoint", str(folders["qa"]),
                 "--context", CONTEXT, "who lives in paris?"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["output"]
    assert CONTEXT[answer["start"]:answer["end"]] == answer["answer"]
    assert main(["predict", "--task", "question-answering", "--checkpoint", str(folders["qa"]), "who?"]) == 2
    assert "needs --context" in capsys.readouterr().err
