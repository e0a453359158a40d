r"""Word-piece / label alignment for token classification (tagging), and batches of it.

A tagged corpus labels *words*; BERT sees *word pieces*. Each word is cut on its own (as Hugging
Face's tokenizers do with ``is_split_into_words=True``), and only its **first** piece carries the
word's label; the other pieces get ``-100`` (``IGNORE_INDEX``), which the cross-entropy skips::

    words   :        The   jury   praised   Atlanta's
    pieces  :  [CLS] the   jury   praised   atlanta   '     s     [SEP]
    labels  :  -100  DET   NOUN   VERB      NOUN      -100  -100  -100

so the loss, the accuracy and the predictions are per word, whatever the vocabulary. A word the
tokenizer turns into nothing (a lone control character) has no piece and so no label: it is
counted in ``EncodedTagged.dropped_words``; words cut off by ``max_length`` are counted in
``truncated_words``. The word -> first-piece index (``word_starts``) maps predictions back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..constants import IGNORE_INDEX
from .classification import FinetuneError


@dataclass
class EncodedTagged:
    """Sentences as ragged int arrays: ``input_ids[i]`` (T_i,) and ``labels[i]`` (T_i,) with -100 off word starts."""
    input_ids: list
    labels: list
    word_starts: list                  # word_starts[i][w] = piece index of word w (or -1: dropped/truncated)
    lengths: np.ndarray                # (N,) pieces per sentence, specials included
    dropped_words: int = 0
    truncated_words: int = 0
    label_names: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def align_words(tokenizer, words: Sequence[str], word_labels: Sequence[int] | None, max_length: int):
    """One sentence -> ``(input_ids, labels, word_starts, dropped, truncated)``.

    ``[CLS] pieces(word_0) pieces(word_1) ... [SEP]``, at most ``max_length`` pieces; label of a
    word on its first piece, ``-100`` everywhere else (specials, continuation pieces).
    """
    ids, labels, starts = [tokenizer.cls_token_id], [IGNORE_INDEX], []
    dropped = truncated = 0
    budget = max_length - 1                             # room left before [SEP]
    for w, word in enumerate(words):
        pieces = [p for sub in tokenizer.basic_tokenize(word) for p in tokenizer.wordpiece(sub)]
        if not pieces:
            dropped += 1
            starts.append(-1)
            continue
        if len(ids) + len(pieces) > budget:             # this word and all later ones are cut off
            truncated += len(words) - w
            starts.extend([-1] * (len(words) - w))
            break
        starts.append(len(ids))
        labels.append(IGNORE_INDEX if word_labels is None else int(word_labels[w]))
        labels.extend([IGNORE_INDEX] * (len(pieces) - 1))
        ids.extend(tokenizer.convert_tokens_to_ids(pieces))
    ids.append(tokenizer.sep_token_id)
    labels.append(IGNORE_INDEX)
    return ids, labels, starts, dropped, truncated


def encode_tagged(tokenizer, sentences: Sequence, label_names: Sequence[str], max_length: int,
                  split: str = "data") -> EncodedTagged:
    """Sentences with ``.words`` and ``.tags`` (tag names) -> :class:`EncodedTagged`."""
    if max_length < 3:
        raise FinetuneError(f"max_length must be >= 3 ([CLS] word [SEP]); got {max_length}")
    index = {name: i for i, name in enumerate(label_names)}
    out = EncodedTagged([], [], [], np.zeros(len(sentences), dtype=np.int64), label_names=list(label_names))
    for i, s in enumerate(sentences):
        if len(s.words) != len(s.tags):
            raise FinetuneError(f"{split} sentence {i}: {len(s.words)} words but {len(s.tags)} tags")
        try:
            tag_ids = [index[t] for t in s.tags]
        except KeyError as e:
            raise FinetuneError(f"{split} sentence {i}: tag {e.args[0]!r} is not one of the labels "
                                f"({', '.join(label_names)})") from None
        ids, labels, starts, dropped, truncated = align_words(tokenizer, s.words, tag_ids, max_length)
        out.input_ids.append(np.asarray(ids, dtype=np.int64))
        out.labels.append(np.asarray(labels, dtype=np.int64))
        out.word_starts.append(np.asarray(starts, dtype=np.int64))
        out.lengths[i] = len(ids)
        out.dropped_words += dropped
        out.truncated_words += truncated
    return out


def collate_tagged(encoded: EncodedTagged, idx, pad_token_id: int = 0) -> dict:
    """Sentences ``idx`` -> padded (B, T) arrays ``input_ids, token_type_ids, attention_mask, labels``
    (labels ``-100`` on padding)."""
    idx = np.asarray(idx)
    B, T = len(idx), int(encoded.lengths[idx].max())
    input_ids = np.full((B, T), pad_token_id, dtype=np.int64)          # (B, T)
    labels = np.full((B, T), IGNORE_INDEX, dtype=np.int64)             # (B, T)
    attention_mask = np.zeros((B, T), dtype=np.int64)                  # (B, T)
    for b, i in enumerate(idx):
        n = int(encoded.lengths[i])
        input_ids[b, :n] = encoded.input_ids[i]
        labels[b, :n] = encoded.labels[i]
        attention_mask[b, :n] = 1
    return {"input_ids": input_ids, "token_type_ids": np.zeros_like(input_ids), "attention_mask": attention_mask,
            "labels": labels}
