"""fill-mask: the most probable word pieces for each ``[MASK]``, as Hugging Face's ``FillMaskPipeline``.

Output for one text with one mask: ``[{"score", "token", "token_str", "sequence"}, ...]`` (``top_k``
of them, best first); with several masks, one such list per mask (and then ``sequence`` keeps the
other masks and the special tokens, as Hugging Face does); a list of texts gives a list of those.
``score`` is the softmax over the vocabulary at the mask; ``sequence`` the text with it filled in.
"""
from __future__ import annotations

import numpy as np

from .base import PipelineError, as_list, clean_up_spaces, load_model, run_batches, softmax


class FillMaskPipeline:
    task = "fill-mask"

    def __init__(self, model, tokenizer=None, batch_size: int = 8, top_k: int = 5):
        from ..model.task_models import BertForMaskedLM

        self.model, self.tokenizer, self.max_length, folder = load_model(BertForMaskedLM, model, tokenizer)
        self.clean_up = clean_up_spaces(folder)
        self.batch_size, self.top_k = batch_size, top_k

    def _sequence(self, ids: np.ndarray, keep_specials: bool) -> str:
        tok = self.tokenizer
        drop = {tok.pad_token_id} if keep_specials else set(tok.special_token_ids) | {tok.unk_token_id}
        return tok.decode([i for i in ids.tolist() if i not in drop], clean_up_tokenization_spaces=self.clean_up)

    def __call__(self, inputs, top_k: int | None = None, batch_size: int | None = None):
        texts, single = as_list(inputs)
        top_k = self.top_k if top_k is None else top_k
        tok = self.tokenizer
        encodings = []
        for t in texts:
            if not isinstance(t, str):
                raise PipelineError("fill-mask takes texts (strings)")
            enc = tok.encode(t, max_length=self.max_length)
            if tok.mask_token_id not in enc.input_ids:
                full = tok.encode(t)
                if tok.mask_token_id in full.input_ids:
                    raise PipelineError(f"the [MASK] of {t[:40]!r}... lies beyond the model's max length "
                                        f"({self.max_length} word pieces): truncation cut it off")
                raise PipelineError(f"no [MASK] in {t!r}: fill-mask needs the token [MASK] where the word goes")
            encodings.append(enc)
        rows = run_batches(self.model, encodings, tok.pad_token_id, batch_size or self.batch_size,
                           lambda out: (out.logits,))
        results = []
        for enc, (logits,) in zip(encodings, rows):
            ids = np.asarray(enc.input_ids)
            positions = np.flatnonzero(ids == tok.mask_token_id)
            probs = softmax(logits[positions])                                  # (M, V)
            k = min(top_k, probs.shape[-1])
            per_mask = []
            for m, p in zip(positions, probs):
                best = np.argsort(-p, kind="stable")[:k]
                row = []
                for i in best:
                    filled = ids.copy()
                    filled[m] = i
                    row.append({"score": float(p[i]), "token": int(i),
                                "token_str": tok.decode([i], clean_up_tokenization_spaces=self.clean_up),
                                "sequence": self._sequence(filled, keep_specials=len(positions) > 1)})
                per_mask.append(row)
            results.append(per_mask[0] if len(per_mask) == 1 else per_mask)
        return results[0] if single else results
