"""Classification examples as arrays: tokenized once, batched by length.

**Batches by length.** Rotten Tomatoes snippets average 27 word pieces, but a random batch of
32 is padded to its longest member (~50). :func:`length_bucketed_batches` shuffles, sorts pools
of 50 batches by length, cuts them into batches and shuffles the batches: each batch is still a
random draw of the data, but holds similar lengths, so there is about half as much padding to
compute on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


class FinetuneError(ValueError):
    """A fine-tuning input that cannot be used (data, model, options); the message says why."""


BUCKET_BATCHES = 50                        # batches per length-sorted pool in length_bucketed_batches


@dataclass
class EncodedExamples:
    """Examples tokenized once: ragged token ids and types, labels (N,), lengths (N,)."""
    input_ids: list            # N arrays (n_i,) int64: [CLS] a [SEP] (b [SEP])
    token_type_ids: list       # N arrays (n_i,) int64: 0 on a, 1 on b
    labels: np.ndarray         # (N,) int64
    lengths: np.ndarray        # (N,) int64, n_i

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_examples(tokenizer, examples: Sequence, max_length: int, num_labels: int,
                    what: str = "examples") -> EncodedExamples:
    """Tokenize ``examples`` (objects with ``.text``, ``.text_b`` (or None), ``.label``) once.

    A pair is ``[CLS] a [SEP] b [SEP]``; the longer side is cut first to fit ``max_length``.
    """
    if len(examples) == 0:
        raise FinetuneError(f"{what}: no examples")
    ids, types, labels = [], [], np.empty(len(examples), dtype=np.int64)
    for n, ex in enumerate(examples):
        label = ex.label
        if not isinstance(label, (int, np.integer)) or not 0 <= label < num_labels:
            raise FinetuneError(f"{what}[{n}]: label {label!r} is not an integer in [0, {num_labels})")
        if not isinstance(ex.text, str) or not ex.text.strip():
            raise FinetuneError(f"{what}[{n}]: empty text")
        enc = tokenizer.encode(ex.text, getattr(ex, "text_b", None), max_length=max_length)
        ids.append(np.asarray(enc.input_ids, dtype=np.int64))
        types.append(np.asarray(enc.token_type_ids, dtype=np.int64))
        labels[n] = label
    lengths = np.array([len(a) for a in ids], dtype=np.int64)
    return EncodedExamples(ids, types, labels, lengths)


def collate(encoded: EncodedExamples, idx, pad_token_id: int = 0) -> dict:
    """Rows ``idx`` padded to their longest: ``input_ids, token_type_ids, attention_mask`` (B, T), ``labels`` (B,)."""
    idx = np.asarray(idx)
    B, T = len(idx), int(encoded.lengths[idx].max())
    input_ids = np.full((B, T), pad_token_id, dtype=np.int64)         # (B, T)
    token_type_ids = np.zeros((B, T), dtype=np.int64)                  # (B, T)
    attention_mask = np.zeros((B, T), dtype=np.int64)                  # (B, T) 1 = real token
    for b, i in enumerate(idx):
        n = encoded.lengths[i]
        input_ids[b, :n] = encoded.input_ids[i]
        token_type_ids[b, :n] = encoded.token_type_ids[i]
        attention_mask[b, :n] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
            "labels": encoded.labels[idx]}


def length_ordered_batches(encoded, batch_size: int, pad_token_id: int = 0, collate_fn=collate):
    """Every example once, in batches of similar lengths (less padding; for evaluation): yields ``(idx, batch)``,
    ``idx`` the rows' indices in ``encoded`` (to put results back in order), ``batch`` = ``collate_fn(encoded,
    idx)``."""
    order = np.argsort(encoded.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, collate_fn(encoded, idx, pad_token_id)


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                            bucket_batches: int = BUCKET_BATCHES) -> list[np.ndarray]:
    """One epoch of batches (index arrays) that cover every example exactly once.

    ``perm = rng.permutation(N)`` is cut into pools of ``bucket_batches * batch_size``; each pool
    is sorted by length (stable) and cut into batches of ``batch_size`` (the very last batch of
    the epoch may be smaller); the list of batches is then shuffled. ``bucket_batches=1`` gives
    plain random batches.
    """
    n = len(lengths)
    perm = rng.permutation(n)                                          # (N,)
    pool = max(1, bucket_batches) * batch_size
    batches = []
    for start in range(0, n, pool):
        members = perm[start:start + pool]
        members = members[np.argsort(lengths[members], kind="stable")]
        batches.extend(members[k:k + batch_size] for k in range(0, len(members), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]
