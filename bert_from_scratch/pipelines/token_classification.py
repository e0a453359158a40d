"""token-classification (alias ner), as Hugging Face's ``TokenClassificationPipeline``.

Each word piece (not ``[CLS]``/``[SEP]``) gets the softmax of its logits; its label is the argmax.

- ``aggregation_strategy="none"``: one ``{"entity", "score", "index", "word", "start", "end"}`` per
  piece (``word`` is the piece, or the original text for ``[UNK]``; ``start``/``end`` character
  offsets into the text);
- ``"simple"``: adjacent pieces whose labels have the same type are one group unless the later one is
  ``B-``: ``{"entity_group", "score" (mean of the pieces' scores), "word" (pieces joined), "start", "end"}``.

Entities labelled ``O`` (``ignore_labels``) are left out, after grouping. One text -> a list of
entities; a list of texts -> a list of such lists.
"""
from __future__ import annotations

import numpy as np

from .base import PipelineError, as_list, join_pieces, label_names, load_model, run_batches, softmax

STRATEGIES = ("none", "simple")


def split_tag(label: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; a label without a B-/I- prefix continues: ``("I", label)``."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def group_entities(entities: list[dict]) -> list[dict]:
    """Hugging Face's ``group_entities``: runs of the same type not broken by a ``B-`` -> one group each."""
    groups, run = [], []

    def close():
        groups.append({"entity_group": run[0]["entity"].split("-", 1)[-1],
                       "score": float(np.nanmean([e["score"] for e in run])),
                       "word": join_pieces([e["word"] for e in run]), "start": run[0]["start"], "end": run[-1]["end"]})

    for e in entities:
        if run:
            bi, tag = split_tag(e["entity"])
            if not (tag == split_tag(run[-1]["entity"])[1] and bi != "B"):
                close()
                run = []
        run.append(e)
    if run:
        close()
    return groups


class TokenClassificationPipeline:
    task = "token-classification"

    def __init__(self, model, tokenizer=None, batch_size: int = 8, aggregation_strategy: str = "none",
                 ignore_labels=("O",)):
        from ..model.task_models import BertForTokenClassification

        self.model, self.tokenizer, self.max_length, _ = load_model(BertForTokenClassification, model, tokenizer)
        self.batch_size, self.aggregation_strategy, self.ignore_labels = batch_size, aggregation_strategy, ignore_labels

    def __call__(self, inputs, aggregation_strategy: str | None = None, batch_size: int | None = None):
        strategy = (aggregation_strategy or self.aggregation_strategy).lower()
        if strategy not in STRATEGIES:
            raise PipelineError(f"aggregation_strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
        texts, single = as_list(inputs)
        if not all(isinstance(t, str) for t in texts):
            raise PipelineError("token-classification takes texts (strings)")
        tok = self.tokenizer
        encodings = [tok.encode(t, max_length=self.max_length, return_offsets_mapping=True) for t in texts]
        rows = run_batches(self.model, encodings, tok.pad_token_id, batch_size or self.batch_size,
                           lambda out: (out.logits,))
        names = label_names(self.model)
        results = []
        for text, enc, (logits,) in zip(texts, encodings, rows):
            scores = softmax(logits)                                            # (T, K)
            entities = []
            for i, (tid, special) in enumerate(zip(enc.input_ids, enc.special_tokens_mask)):
                if special:
                    continue
                start, end = (int(x) for x in enc.offsets[i])
                word = text[start:end] if tid == tok.unk_token_id else tok.ids_to_tokens[tid]
                k = int(scores[i].argmax())
                entities.append({"entity": names[k], "score": float(scores[i, k]), "index": i, "word": word,
                                 "start": start, "end": end})
            if strategy == "simple":
                entities = group_entities(entities)
                results.append([e for e in entities if e["entity_group"] not in self.ignore_labels])
            else:
                results.append([e for e in entities if e["entity"] not in self.ignore_labels])
        return results[0] if single else results
