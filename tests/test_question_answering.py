"""Question-answering decoding: windows over long contexts and span selection, against Hugging Face's own."""
from __future__ import annotations

import numpy as np
import pytest

from bert_from_scratch.data import question_answering as qa
from bert_from_scratch.data.tokenizer import Tokenizer
from conftest import requires_transformers

CONTEXT = ("The Brown corpus was compiled at Brown University in 1961 by Henry Kucera and W. Nelson Francis. "
           "It holds about one million words of American English from five hundred samples in fifteen genres, "
           "each sample about two thousand words long, and every word carries a part-of-speech tag.")


def _random_case(rng, T=20):
    start, end = rng.normal(0, 3, T), rng.normal(0, 3, T)
    p_mask = np.ones(T, dtype=np.int64)
    p_mask[6:T - 1] = 0                                   # [CLS] q q q q [SEP] context ... [SEP]
    p_mask[0] = 0
    return start, end, p_mask


def span_mismatches(select, cases=30, top_k=1) -> int:
    """How many random cases ``select`` decodes differently from Hugging Face's ``select_starts_ends``."""
    from transformers.pipelines.document_question_answering import select_starts_ends

    rng = np.random.default_rng(0)
    bad = 0
    for _ in range(cases):
        start, end, p_mask = _random_case(rng)
        want = select_starts_ends(start[None], end[None], p_mask, None, top_k=top_k, max_answer_len=4)
        got = select(start, end, p_mask, None, top_k, 4)
        same = (len(got[0]) == len(want[0]) and np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
                and np.allclose(got[2], want[2], rtol=1e-12, atol=0))
        bad += not same
    return bad


@requires_transformers
@pytest.mark.parametrize("top_k", [1, 5])
def test_span_selection_equals_hugging_face(top_k):
    assert span_mismatches(qa.select_spans, top_k=top_k) == 0


@requires_transformers
def test_span_selection_check_rejects_planted_bugs():
    def no_cls_zeroing(start, end, p_mask, attention_mask, top_k, max_answer_len):   # CLS left out of the softmax
        p = p_mask.copy()
        p[0] = 1
        return qa.select_spans(start, end, p, attention_mask, top_k, max_answer_len)

    def off_by_one_length(start, end, p_mask, attention_mask, top_k, max_answer_len):
        return qa.select_spans(start, end, p_mask, attention_mask, top_k, max_answer_len + 1)

    assert span_mismatches(no_cls_zeroing) > 0
    assert span_mismatches(off_by_one_length) > 0


@requires_transformers
def test_windows_equal_hugging_face_overflowing_tokens():
    from transformers import BertTokenizerFast

    from bert_from_scratch.pretrained import model_folder

    folder = model_folder("all-MiniLM-L6-v2")
    hf = BertTokenizerFast.from_pretrained(str(folder))
    assert hf.convert_tokens_to_ids("[CLS]") == 101
    ours = Tokenizer.from_pretrained(folder)
    question = "Who compiled the Brown corpus?"
    for max_length, stride in ((32, 8), (40, 16), (64, 10)):
        enc = hf(question, CONTEXT, truncation="only_second", max_length=max_length, stride=stride,
                 return_overflowing_tokens=True, return_offsets_mapping=True)
        windows = qa.qa_windows(ours, question, CONTEXT, max_length, stride)
        assert len(windows) == len(enc["input_ids"]) >= 2
        for w, ids, types, offs, k in zip(windows, enc["input_ids"], enc["token_type_ids"], enc["offset_mapping"],
                                          range(len(windows))):
            assert w.input_ids == ids and w.token_type_ids == types
            seq = enc.sequence_ids(k)
            context = [i for i, s in enumerate(seq) if s == 1]
            assert w.offsets[context].tolist() == [list(offs[i]) for i in context]
            assert np.flatnonzero(w.p_mask == 0).tolist() == [0] + context


def test_decode_answers_maps_the_best_span_back_to_the_text():
    tok = Tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "who", "compiled", "it", "?", "henry", "kucera",
                     "and", "francis", "did", "."])
    context = "Henry Kucera and Francis did."
    windows = qa.qa_windows(tok, "who compiled it?", context, max_length=16, doc_stride=2)
    assert len(windows) == 1 and windows[0].input_ids[:6] == [2, 5, 6, 7, 8, 3]
    T = len(windows[0].input_ids)
    start, end = np.zeros(T), np.zeros(T)
    start[6], end[7] = 5.0, 5.0                                # "henry kucera"
    start[1], end[1] = 9.0, 9.0                                # in the question: never an answer
    (best,) = qa.decode_answers(windows, [start], [end], context)
    assert best["answer"] == "Henry Kucera" and (best["start"], best["end"]) == (0, 12)
    assert 0 < best["score"] < 1
    two = qa.decode_answers(windows, [start], [end], context, top_k=2)
    assert len(two) == 2 and two[0]["score"] >= two[1]["score"]
    with pytest.raises(ValueError, match="no room for windows"):
        qa.qa_windows(tok, "who compiled it?", context, max_length=9, doc_stride=4)
