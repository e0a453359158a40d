"""text-classification (alias sentiment-analysis), as Hugging Face's ``TextClassificationPipeline``.

Scores: softmax over the labels (single-label), a sigmoid per label (``multi_label_classification``
or one output), or the raw outputs (``regression``); ``function_to_apply`` overrides. Output: the best
``{"label", "score"}`` per text (one text string -> a list of one, as Hugging Face); with ``top_k`` (None for all)
a list of them, best first, per text. An input may be a dict ``{"text": a, "text_pair": b}``.
"""
from __future__ import annotations

import numpy as np

from ..nn.losses import sigmoid
from .base import PipelineError, as_list, label_names, load_model, run_batches, softmax

_UNSET = object()


class TextClassificationPipeline:
    task = "text-classification"

    def __init__(self, model, tokenizer=None, batch_size: int = 8):
        from ..model import BertForSequenceClassification

        self.model, self.tokenizer, self.max_length, _ = load_model(BertForSequenceClassification, model, tokenizer)
        self.batch_size = batch_size

    def _function(self, function_to_apply):
        if function_to_apply is not None:
            if function_to_apply not in ("softmax", "sigmoid", "none"):
                raise PipelineError(f"function_to_apply must be softmax, sigmoid or none; got {function_to_apply!r}")
            return function_to_apply
        kind = getattr(self.model, "problem_type", None)
        if kind == "regression":
            return "none"
        if kind == "multi_label_classification" or self.model.num_labels == 1:
            return "sigmoid"
        return "softmax"

    def __call__(self, inputs, top_k=_UNSET, function_to_apply=None, batch_size: int | None = None):
        items, single = as_list(inputs)
        encodings = []
        for x in items:
            a, b = (x.get("text"), x.get("text_pair")) if isinstance(x, dict) else (x, None)
            if not isinstance(a, str):
                raise PipelineError("a text-pair input is a dict {'text': ..., 'text_pair': ...}")
            encodings.append(self.tokenizer.encode(a, b, max_length=self.max_length))
        rows = run_batches(self.model, encodings, self.tokenizer.pad_token_id, batch_size or self.batch_size,
                           lambda out: (out.logits,))
        fn = self._function(function_to_apply)
        names = label_names(self.model)
        results = []
        for (logits,) in rows:
            z = np.asarray(logits, dtype=np.float64)
            scores = softmax(z) if fn == "softmax" else sigmoid(z) if fn == "sigmoid" else z
            if top_k is _UNSET:
                results.append({"label": names[int(scores.argmax())], "score": float(scores.max())})
            else:
                ranked = sorted(({"label": names[i], "score": float(s)} for i, s in enumerate(scores)),
                                key=lambda d: d["score"], reverse=True)
                results.append(ranked if top_k is None else ranked[:top_k])
        if isinstance(inputs, str) and top_k is _UNSET:          # Hugging Face's legacy form: a list of one
            return results
        return results[0] if single else results
