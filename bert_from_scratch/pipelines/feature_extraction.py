"""feature-extraction and sentence embeddings.

- ``pipeline("feature-extraction")``: the encoder's last hidden states, as Hugging Face's
  ``FeatureExtractionPipeline``: one text -> nested lists (1, T, H); ``return_tensors=True`` gives arrays;
- ``pipeline("sentence-embeddings")``: one vector per text, the mean of the last hidden states over
  the real tokens, L2-normalised (``pretrained.mean_pool``: what sentence-transformers' all-MiniLM-L6-v2
  computes), with inputs cut to the model's own ``max_seq_length``.
"""
from __future__ import annotations

import numpy as np

from .base import PipelineError, as_list, load_model, run_batches


class FeatureExtractionPipeline:
    task = "feature-extraction"

    def __init__(self, model, tokenizer=None, batch_size: int = 8):
        from ..model import BertModel

        self.model, self.tokenizer, self.max_length, _ = load_model(BertModel, model, tokenizer)
        self.batch_size = batch_size

    def _hidden(self, inputs, batch_size):
        texts, single = as_list(inputs)
        if not all(isinstance(t, str) for t in texts):
            raise PipelineError(f"{self.task} takes texts (strings)")
        encodings = [self.tokenizer.encode(t, max_length=self.max_length) for t in texts]
        rows = run_batches(self.model, encodings, self.tokenizer.pad_token_id, batch_size or self.batch_size,
                           lambda out: (out.last_hidden_state,))
        return [h.astype(np.float64) for (h,) in rows], single

    def __call__(self, inputs, return_tensors: bool = False, batch_size: int | None = None):
        hidden, single = self._hidden(inputs, batch_size)
        out = [h[None] if return_tensors else h[None].tolist() for h in hidden]     # (1, T, H) each
        return out[0] if single else out


class SentenceEmbeddingPipeline(FeatureExtractionPipeline):
    task = "sentence-embeddings"

    def __call__(self, inputs, normalize: bool = True, batch_size: int | None = None):
        from ..pretrained import mean_pool

        hidden, single = self._hidden(inputs, batch_size)
        vecs = [np.asarray(mean_pool(h[None], np.ones((1, len(h))), normalize=normalize))[0] for h in hidden]
        return vecs[0] if single else np.stack(vecs)                               # (H,) or (N, H)
