"""What an encoded text is: :class:`Encoding`, and how a pair is cut to fit (:func:`truncate_longest_first`).

``Tokenizer.encode`` (``tokenizer.py``) returns an :class:`Encoding`; ``encode_batch`` pads many
of them into (B, T) arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Encoding:
    """One encoded text or text pair: ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``.

    ``token_type_ids`` are 0 for ``[CLS] a [SEP]`` and 1 for ``b [SEP]``; ``attention_mask`` is
    all ones (padding happens in ``encode_batch``). ``special_tokens_mask`` is 1 on the added
    ``[CLS]``/``[SEP]``. With ``return_offsets_mapping=True``: ``offsets[i]`` is the ``(start, end)``
    span of token ``i`` in its own text (``(0, 0)`` for added specials), and ``word_ids[i]`` the
    index of the word it belongs to within its text (``None`` for added specials), as Hugging
    Face's ``offset_mapping`` and ``word_ids()``.
    """
    input_ids: list[int]
    token_type_ids: list[int]
    attention_mask: list[int]
    tokens: list[str] = field(default_factory=list)
    special_tokens_mask: list[int] = field(default_factory=list)
    offsets: list[tuple[int, int]] | None = None
    word_ids: list[int | None] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def sequence_ids(self) -> list[int | None]:
        """Per token: 0 (first text), 1 (second text) or ``None`` (an added special token)."""
        return [None if s else t for s, t in zip(self.special_tokens_mask, self.token_type_ids)]


def truncate_longest_first(tokens_a: list, tokens_b: list, max_num_tokens: int) -> None:
    """Shorten the pair in place to ``len(a) + len(b) <= max_num_tokens`` by cutting the end of
    the longer side, as ``_truncate_seq_pair`` in google-research/bert's ``run_classifier``.

    Cutting the longer side keeps as much as possible of a short question or premise. The
    shorter side ``s`` is kept whole if the longer can shrink to ``max(s, max_num_tokens - s)``;
    otherwise both get half, the odd token going to the originally longer side (to ``b`` on a
    tie). That is Hugging Face's ``truncation="longest_first"`` exactly; popping one token at a
    time from the longer side (google-research) gives the same lengths up to that odd token.
    """
    n_a, n_b = len(tokens_a), len(tokens_b)
    if n_a + n_b <= max_num_tokens:
        return
    swap = n_a > n_b
    short, long_ = (n_b, n_a) if swap else (n_a, n_b)
    long_ = short if short > max_num_tokens else max(short, max_num_tokens - short)
    if short + long_ > max_num_tokens:
        short = max_num_tokens // 2
        long_ = short + max_num_tokens % 2
    keep_a, keep_b = (long_, short) if swap else (short, long_)
    del tokens_a[keep_a:]
    del tokens_b[keep_b:]


def pad_batch(encodings: list, pad_token_id: int) -> dict:
    """Encodings (anything with ``input_ids`` and ``token_type_ids``) -> (B, T) int64 arrays padded to the
    longest, with the attention mask."""
    B, T = len(encodings), max(len(e.input_ids) for e in encodings)
    ids = np.full((B, T), pad_token_id, dtype=np.int64)                # (B, T)
    types = np.zeros((B, T), dtype=np.int64)                           # (B, T)
    mask = np.zeros((B, T), dtype=np.int64)                            # (B, T)
    for b, e in enumerate(encodings):
        n = len(e.input_ids)
        ids[b, :n], types[b, :n], mask[b, :n] = e.input_ids, e.token_type_ids, 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
