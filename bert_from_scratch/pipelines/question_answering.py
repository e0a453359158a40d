"""question-answering: the answer span of a context, as Hugging Face's ``QuestionAnsweringPipeline`` (v4).

``pipe(question=q, context=c)``, ``pipe({"question": q, "context": c})`` or a list of such dicts ->
``{"score", "start", "end", "answer"}`` (``top_k`` > 1: a list, best first). Long contexts are cut into
windows overlapping by ``doc_stride`` word pieces; the decoding (softmax over the context's positions,
best ``start <= end`` within ``max_answer_len``, offsets back to the text) is
:mod:`bert_from_scratch.data.question_answering`.
"""
from __future__ import annotations

from ..data.question_answering import decode_answers, qa_windows
from .base import PipelineError, as_list, load_model, run_batches


class QuestionAnsweringPipeline:
    task = "question-answering"

    def __init__(self, model, tokenizer=None, batch_size: int = 8):
        from ..model.task_models import BertForQuestionAnswering

        self.model, self.tokenizer, self.max_length, _ = load_model(BertForQuestionAnswering, model, tokenizer)
        self.batch_size = batch_size

    def __call__(self, inputs=None, question=None, context=None, top_k: int = 1, max_answer_len: int = 15,
                 max_seq_len: int = 384, doc_stride: int = 128, max_question_len: int = 64,
                 batch_size: int | None = None):
        if inputs is None:
            if question is None or context is None:
                raise PipelineError("question-answering needs question=... and context=...")
            inputs = {"question": question, "context": context}
        items, single = as_list(inputs, "dict {'question': ..., 'context': ...}")
        max_seq_len = min(max_seq_len, self.max_length)
        doc_stride = min(doc_stride, max_seq_len // 2)
        results = []
        for x in items:
            if not (isinstance(x, dict) and isinstance(x.get("question"), str) and isinstance(x.get("context"), str)):
                raise PipelineError("each question-answering input is a dict {'question': str, 'context': str}")
            try:
                windows = qa_windows(self.tokenizer, x["question"], x["context"], max_seq_len, doc_stride,
                                     max_question_len)
            except ValueError as e:
                raise PipelineError(str(e)) from None
            rows = run_batches(self.model, windows, self.tokenizer.pad_token_id, batch_size or self.batch_size,
                               lambda out: (out.start_logits, out.end_logits))
            answers = decode_answers(windows, [r[0] for r in rows], [r[1] for r in rows], x["context"], top_k,
                                     max_answer_len)
            results.append(answers[0] if top_k == 1 and answers else answers)
        return results[0] if single else results
