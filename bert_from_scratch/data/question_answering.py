r"""Extractive question answering: windows over a long context, and the answer span decoded from logits.

**Windows (document stride).** The input is ``[CLS] question [SEP] context [SEP]``. A context longer
than fits is cut into windows of ``L = max_length - len(question) - 3`` word pieces that overlap by
``doc_stride`` pieces (window ``k`` starts at piece ``k (L - doc_stride)``), so an answer cut by one
window's edge lies whole inside the next; as Hugging Face's tokenizers do with
``truncation="only_second", stride=doc_stride, return_overflowing_tokens=True``.

**Decoding** (Hugging Face's ``select_starts_ends`` and ``decode_spans``; DrQA's idea). In each window,
positions outside the context (question, ``[SEP]``, padding) are set to ``-10000`` and the start and
end logits are turned into probabilities over the rest (``[CLS]`` included); ``[CLS]`` is then zeroed.
A span ``(s, e)`` scores

.. math::
    \text{score}(s, e) = p_{\text{start}}(s)\, p_{\text{end}}(e),\qquad s \le e \le s + \text{max\_answer\_len} - 1

(the upper triangle, band-limited, of the outer product ``p_start p_end^T``, a (T, T) matrix). The best
spans of every window are pooled and sorted by score; each token span becomes a character span of
the original text through the tokenizer's offset mapping: ``start = offsets[s][0]``,
``end = offsets[e][1]``, ``answer = context[start:end]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..constants import MASK_VALUE
from ..nn.layers import softmax_forward


@dataclass
class QAWindow:
    """One window: model inputs (T,), ``p_mask`` (T,) 1 where no answer may be, offsets (T, 2) into the context."""
    input_ids: list
    token_type_ids: list
    p_mask: np.ndarray
    offsets: np.ndarray


def qa_windows(tokenizer, question: str, context: str, max_length: int = 384, doc_stride: int = 128,
               max_question_length: int = 64) -> list[QAWindow]:
    """``[CLS] question [SEP] window of context [SEP]`` for every window (see the module docstring)."""
    q = tokenizer.tokenize(question)
    if not q:
        raise ValueError("the question is empty")
    if not context or not context.strip():
        raise ValueError("the context is empty")
    q = q[:max_question_length]
    pieces, offsets, _ = tokenizer.tokenize_with_offsets(context)
    L = max_length - len(q) - 3
    if L <= doc_stride:
        raise ValueError(f"max_length {max_length} leaves {L} pieces of context after the question: no room for "
                         f"windows overlapping by doc_stride {doc_stride}; raise max_length or lower doc_stride")
    windows, start = [], 0
    q_ids = tokenizer.convert_tokens_to_ids(q)
    while True:
        part = pieces[start:start + L]
        ids = [tokenizer.cls_token_id] + q_ids + [tokenizer.sep_token_id] + tokenizer.convert_tokens_to_ids(part) \
            + [tokenizer.sep_token_id]
        n_q = len(q) + 2
        types = [0] * n_q + [1] * (len(part) + 1)
        p_mask = np.ones(len(ids), dtype=np.int64)                          # (T,)
        p_mask[n_q:n_q + len(part)] = 0
        p_mask[0] = 0                                                       # [CLS]: in the softmax, then zeroed
        offs = np.zeros((len(ids), 2), dtype=np.int64)                      # (T, 2)
        if part:
            offs[n_q:n_q + len(part)] = np.asarray(offsets[start:start + L], dtype=np.int64)
        windows.append(QAWindow(ids, types, p_mask, offs))
        if start + L >= len(pieces):
            return windows
        start += L - doc_stride


def select_spans(start_logits, end_logits, p_mask, attention_mask=None, top_k: int = 1, max_answer_len: int = 15):
    """One window: logits (T,) -> ``(starts, ends, scores)`` of its best ``top_k`` allowed spans, best first."""
    start_logits = np.asarray(start_logits, dtype=np.float64)
    end_logits = np.asarray(end_logits, dtype=np.float64)
    allowed = 1 - np.asarray(p_mask)                                        # (T,)
    if attention_mask is not None:
        allowed = allowed & np.asarray(attention_mask)

    def probabilities(logits):
        z = np.where(allowed == 0, float(MASK_VALUE), logits)
        p = softmax_forward(z)[0]
        p[0] = 0.0                                                          # [CLS]: no answer is not an answer here
        return p

    ps, pe = probabilities(start_logits), probabilities(end_logits)
    candidates = np.tril(np.triu(np.outer(ps, pe)), max_answer_len - 1)       # (T, T): s <= e < s + max_answer_len
    flat = candidates.ravel()
    if top_k == 1:
        order = np.array([np.argmax(flat)])
    else:
        order = np.argsort(-flat, kind="stable")[:top_k]
    starts, ends = np.unravel_index(order, candidates.shape)
    ok = (allowed[starts] != 0) & (allowed[ends] != 0)
    starts, ends = starts[ok], ends[ok]
    return starts, ends, candidates[starts, ends]


def decode_answers(windows: list[QAWindow], start_logits, end_logits, context: str, top_k: int = 1,
                   max_answer_len: int = 15) -> list[dict]:
    """Best answers over all windows: ``[{"score", "start", "end", "answer"}, ...]`` sorted by score.

    ``start_logits[i]``, ``end_logits[i]``: window ``i``'s logits (at least its length; padding beyond is ignored).
    """
    if top_k < 1 or max_answer_len < 1:
        raise ValueError(f"top_k and max_answer_len must be >= 1; got {top_k}, {max_answer_len}")
    answers = []
    for w, s_log, e_log in zip(windows, start_logits, end_logits):
        T = len(w.input_ids)
        starts, ends, scores = select_spans(np.asarray(s_log)[:T], np.asarray(e_log)[:T], w.p_mask, None, top_k,
                                            max_answer_len)
        for s, e, score in zip(starts, ends, scores):
            a, b = int(w.offsets[s][0]), int(w.offsets[e][1])
            answers.append({"score": float(score), "start": a, "end": b, "answer": context[a:b]})
    answers.sort(key=lambda x: x["score"], reverse=True)
    return answers[:top_k]
