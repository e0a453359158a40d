"""``bert_from_scratch.pipeline(task, model=FOLDER)``: Hugging Face's pipelines on our hand-written models.

>>> from bert_from_scratch import pipeline                                   # doctest: +SKIP
>>> pipeline("fill-mask", model="runs/pretrain")("the market [MASK] sharply")  # doctest: +SKIP
[{'score': 0.31, 'token': 1234, 'token_str': 'rose', 'sequence': 'the market rose sharply'}, ...]

Tasks (and aliases): ``fill-mask``, ``text-classification`` (``sentiment-analysis``),
``token-classification`` (``ner``), ``question-answering``, ``feature-extraction``, and
``sentence-embeddings``. ``model`` is a folder (ours or saved by ``transformers``), a run folder, a
known name (``"all-MiniLM-L6-v2"``), or a model object with ``tokenizer=``. The inputs and outputs
have Hugging Face's forms; each task's file says them.
"""
from __future__ import annotations

from .base import PipelineError
from .feature_extraction import FeatureExtractionPipeline, SentenceEmbeddingPipeline
from .fill_mask import FillMaskPipeline
from .question_answering import QuestionAnsweringPipeline
from .text_classification import TextClassificationPipeline
from .token_classification import TokenClassificationPipeline

PIPELINES = {p.task: p for p in (FillMaskPipeline, TextClassificationPipeline, TokenClassificationPipeline,
                                 QuestionAnsweringPipeline, FeatureExtractionPipeline, SentenceEmbeddingPipeline)}
ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}


def pipeline(task: str, model="all-MiniLM-L6-v2", tokenizer=None, batch_size: int = 8, **kwargs):
    """The pipeline for ``task`` on ``model``; ``kwargs`` go to its constructor (``top_k``,
    ``aggregation_strategy``)."""
    name = ALIASES.get(task, task)
    if name not in PIPELINES:
        raise PipelineError(f"unknown task {task!r}; known: {', '.join([*PIPELINES, *ALIASES])}")
    return PIPELINES[name](model, tokenizer=tokenizer, batch_size=batch_size, **kwargs)


__all__ = ["pipeline", "PipelineError", "PIPELINES", "ALIASES"]
