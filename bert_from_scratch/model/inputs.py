"""Input checks for the models: a clear one-line ValueError before anything deep in NumPy fails."""
from __future__ import annotations

import numpy as np

from ..config import BertConfig
from ..constants import IGNORE_INDEX


def _as_int_array(name, a, xp, ndim):
    if a is None:
        return None
    if not hasattr(a, "dtype"):
        a = np.asarray(a)
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "b":
            a = a.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integers; got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s); got shape {tuple(a.shape)}")
    return xp.asarray(a)


def check_inputs(cfg: BertConfig, xp, input_ids, token_type_ids, attention_mask):
    ids = _as_int_array("input_ids", input_ids, xp, 2)
    if ids is None:
        raise ValueError("input_ids is required")
    B, T = ids.shape
    if T == 0 or B == 0:
        raise ValueError(f"input_ids is empty: shape {tuple(ids.shape)}")
    if T > cfg.max_position_embeddings:
        raise ValueError(f"sequence too long: {T} tokens but max_position_embeddings is "
                         f"{cfg.max_position_embeddings}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= cfg.vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id out of range: {bad} (vocab_size is {cfg.vocab_size})")
    if token_type_ids is None:
        tt = xp.zeros_like(ids)
    else:
        tt = _as_int_array("token_type_ids", token_type_ids, xp, 2)
        if tt.shape != ids.shape:
            raise ValueError(f"token_type_ids has shape {tuple(tt.shape)}; input_ids has {tuple(ids.shape)}")
        if int(tt.min()) < 0 or int(tt.max()) >= cfg.type_vocab_size:
            raise ValueError(f"token_type_ids must be in [0, {cfg.type_vocab_size}); got values in "
                             f"[{int(tt.min())}, {int(tt.max())}]")
    if attention_mask is None:
        mask = None
    else:
        mask = _as_int_array("attention_mask", attention_mask, xp, 2) if not (
            hasattr(attention_mask, "dtype") and attention_mask.dtype.kind == "f") else xp.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; expected {tuple(ids.shape)} "
                             f"like input_ids")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (keep)")
    return ids, tt, mask


def _check_labels(cfg, xp, labels, next_sentence_label, B, T):
    if labels is not None:
        labels = _as_int_array("labels", labels, xp, 2)
        if labels.shape != (B, T):
            raise ValueError(f"labels has shape {tuple(labels.shape)}; expected {(B, T)} like input_ids")
        ok = (labels == IGNORE_INDEX) | ((labels >= 0) & (labels < cfg.vocab_size))
        if not bool(ok.all()):
            raise ValueError(f"labels must be -100 (ignore) or a token id in [0, {cfg.vocab_size})")
    if next_sentence_label is not None:
        next_sentence_label = _as_int_array("next_sentence_label", next_sentence_label, xp, 1)
        if next_sentence_label.shape != (B,):
            raise ValueError(f"next_sentence_label has shape {tuple(next_sentence_label.shape)}; expected ({B},)")
        if not bool(((next_sentence_label == 0) | (next_sentence_label == 1)).all()):
            raise ValueError("next_sentence_label must be 0 (is next) or 1 (random)")
    return labels, next_sentence_label
