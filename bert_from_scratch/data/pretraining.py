"""Pretraining instances for BERT's two tasks, by the google-research/bert recipe.

``create_pretraining_data.py`` of google-research/bert turns documents into training pairs:

**Segment pairs (next-sentence prediction, NSP).** A document is a list of sentences, each a
list of word pieces. Walk through it, gathering sentences into a *chunk* until the chunk holds
``target_seq_length`` tokens (``max_seq_length - 3``, the room left by ``[CLS] A [SEP] B
[SEP]``; with probability ``short_seq_prob`` a random length in ``[2, max_seq_length - 3]``, so
the model also sees short inputs). Then split the chunk at a random sentence boundary into
``A`` (the first ``a_end`` sentences) and ``B`` (the rest), and:

- with probability 1/2 (always, if the chunk is a single sentence) replace ``B`` by a run of
  sentences starting at a random sentence of a random *other* document (``is_random_next``,
  label 1), and put the unused sentences of the chunk back so that they start the next chunk;
- otherwise keep the true continuation (label 0, "IsNext").

``truncate_pair_randomly`` then drops tokens, one at a time, from the front or the back (a coin
flip) of the longer side until ``len(A) + len(B) <= max_seq_length - 3``.

**Masked language model (MLM).** Choose ``n = min(max_predictions_per_seq, max(1,
round(len(tokens) * masked_lm_prob)))`` positions uniformly among all but ``[CLS]``/``[SEP]``;
each chosen token becomes ``[MASK]`` with probability 0.8, a random vocabulary token with 0.1,
and stays itself with 0.1 (so the model cannot learn that only ``[MASK]`` needs predicting).
With ``whole_word_mask`` the candidates are whole words (a piece and its ``##`` continuations
are chosen together), and a word that would overshoot ``n`` is skipped.

``dupe_factor`` repeats the whole pass with fresh randomness (different pairs and masks of
the same text); the documents are shuffled first and the instances at the end.

Two deliberate differences from the original, both documented where they happen: a random
next segment is drawn from a *different* document for sure (the original retries 10 times),
and a random replacement token is never a bracketed entry (``[CLS]``, ``[PAD]``,
``[unused7]`` ...), only a real word piece.

``instances_to_arrays`` packs instances into padded NumPy arrays for the model, and
``check_instances`` is a statistical test of all the above (used by the tests, and shown there
to reject broken recipes; it lives in ``pretraining_checks.py`` and is importable from here).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import chain
from typing import Sequence

import numpy as np

from ..constants import IGNORE_INDEX     # label at positions without an MLM prediction (-100)
from .pretraining_checks import check_instances, instance_statistics  # noqa: F401  (re-exported)


@dataclass
class Instance:
    """One pretraining example ``[CLS] A [SEP] B [SEP]`` after masking.

    ``tokens`` are the (masked) word pieces; ``masked_lm_positions`` (increasing) index the
    predicted positions and ``masked_lm_labels`` hold the original pieces there.
    ``doc_index_a`` / ``doc_index_b`` are the input documents that ``A`` and ``B`` come from.
    """
    tokens: list[str]
    segment_ids: list[int]
    is_random_next: bool
    masked_lm_positions: list[int]
    masked_lm_labels: list[str]
    doc_index_a: int
    doc_index_b: int


def tokenize_documents(docs, tokenizer) -> list[list[list[str]]]:
    """Documents -> sentences -> word pieces; empty sentences and documents are dropped.

    ``docs`` is a list of ``corpora.Document`` (their ``.sentences`` are used), or a list of
    lists of sentence strings.
    """
    out = []
    for doc in docs:
        sentences = doc.sentences if hasattr(doc, "sentences") else doc
        if isinstance(sentences, str):
            raise TypeError("each document must be a list of sentences (or have .sentences), not a str")
        pieces = [tokenizer.tokenize(s) for s in sentences]
        pieces = [p for p in pieces if p]
        if pieces:
            out.append(pieces)
    return out


def truncate_pair_randomly(tokens_a: list, tokens_b: list, max_num_tokens: int, rng: random.Random) -> None:
    """Shorten the longer of ``A``/``B`` (ties: ``B``) by one token, from its front or back at
    random, until ``len(A) + len(B) <= max_num_tokens`` (in place).

    Cutting at either end at random, rather than always the end, avoids a bias: otherwise the
    ends of segments would be systematically missing. (``truncate_seq_pair`` in google-research's
    ``create_pretraining_data.py``; the tokenizer's ``truncate_longest_first`` is the
    deterministic cut used for fine-tuning inputs.)

    Which side loses each token depends on the lengths alone, so the counts are worked out first;
    of a side's ``r`` removals the number taken from the front is a sum of ``r`` fair coins, read as
    the set bits of ``getrandbits(r)``: the same distribution as one coin per token, in one call.
    """
    excess = len(tokens_a) + len(tokens_b) - max_num_tokens
    if excess <= 0:
        return
    cut_a = cut_b = 0
    gap = len(tokens_a) - len(tokens_b)
    if gap > 0:                                         # A is longer: it shrinks until the two are level
        cut_a = min(excess, gap)
    elif gap < 0:
        cut_b = min(excess, -gap)
    rest = excess - cut_a - cut_b                      # then level: B first (ties go to B), in turns
    cut_a += rest // 2
    cut_b += rest - rest // 2
    for tokens, cut in ((tokens_a, cut_a), (tokens_b, cut_b)):
        if cut:
            front = bin(rng.getrandbits(cut)).count("1")
            del tokens[len(tokens) - (cut - front):]
            del tokens[:front]


def _replacement_vocab(tokenizer) -> list[str]:
    """Word pieces a random replacement may draw from: the vocabulary minus ``[...]`` entries."""
    words = [t for t in tokenizer.ids_to_tokens if not (t.startswith("[") and t.endswith("]") and len(t) > 2)]
    if not words:
        raise ValueError("the vocabulary has no ordinary word pieces to draw random replacements from")
    return words


def _shuffled(units: list, uniform):
    """``units`` in a uniformly random order, as after ``rng.shuffle``, drawn only as far as it is read (a
    Fisher-Yates shuffle stopped early: ~10 draws for 64 tokens instead of ~60), which is most of the masking's
    time on a large corpus. Shuffles ``units`` in place."""
    n = len(units)
    for k in range(n):
        j = k + int(uniform() * (n - k))
        units[k], units[j] = units[j], units[k]
        yield units[k]


def create_masked_lm_predictions(tokens: list[str], masked_lm_prob: float, max_predictions_per_seq: int,
                                 replacement_words: Sequence[str], rng: random.Random,
                                 whole_word_mask: bool = False, preferred: frozenset[str] | None = None,
                                 preferred_share: float = 0.1) -> tuple[list[str], list[int], list[str]]:
    """Mask ``tokens`` (with ``[CLS]``/``[SEP]`` in place): return (masked tokens, positions, labels).

    The candidates are visited in a uniformly random order. ``preferred`` (a set of words, e.g.
    ``sentiment_words.sentiment_words()``): sentiment-aware masking after SKEP (Tian et al. 2020): the pieces
    that are a whole preferred word (``good``, but not the ``good`` of ``good ##ness``) are visited first, in
    random order, until ``round(len(tokens) * preferred_share)`` positions are chosen (at most the usual
    ``n``), then all the others (preferred or not) as usual until ``n``. Without ``preferred`` the draws are
    those of before.
    """
    units: list                             # each entry: one position, or (whole words) a list of positions
    if whole_word_mask:
        units = []
        for i, token in enumerate(tokens):
            if token == "[CLS]" or token == "[SEP]":
                continue
            # (a "##" piece right after [SEP] lost its word start to truncation: a unit of its own;
            # the original would glue it to the last piece of A)
            if units and token.startswith("##") and units[-1][-1] == i - 1:
                units[-1].append(i)
            else:
                units.append([i])
    else:
        units = [i for i, token in enumerate(tokens) if token != "[CLS]" and token != "[SEP]"]

    output = list(tokens)
    num_to_predict = min(max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob))))
    uniform = rng.random
    n_words = len(replacement_words)
    masked: list[tuple[int, str]] = []

    def take(order, limit: int) -> None:
        """Mask the units of ``order`` (80% [MASK], 10% random, 10% kept) until ``limit`` positions are."""
        while len(masked) < limit:             # checked before the next draw: the draws of a plain shuffle
            unit = next(order, None)
            if unit is None:
                break
            if not whole_word_mask:
                unit = (unit,)
            if len(masked) + len(unit) > limit:     # a whole word that would overshoot: skip it
                continue
            for index in unit:
                if uniform() < 0.8:
                    replacement = "[MASK]"
                elif uniform() < 0.5:
                    replacement = tokens[index]                                  # 10%: keep
                else:
                    replacement = replacement_words[int(uniform() * n_words)]    # 10%: random
                output[index] = replacement
                masked.append((index, tokens[index]))

    if preferred:
        def is_word(i: int) -> bool:        # a preferred word, whole: the next piece does not continue it
            return tokens[i] in preferred and not (i + 1 < len(tokens) and tokens[i + 1].startswith("##"))
        first = [u for u in units if (len(u) == 1 and is_word(u[0]) if whole_word_mask else is_word(u))]
        if first:
            take(_shuffled(first, uniform), min(num_to_predict, int(round(len(tokens) * preferred_share))))
            taken = {p for p, _ in masked}          # the rest (other preferred words too) as usual
            units = [u for u in units if (u[0] if whole_word_mask else u) not in taken]
    take(_shuffled(units, uniform), num_to_predict)
    masked.sort()
    return output, [p for p, _ in masked], [t for _, t in masked]


def _instances_from_document(documents: list[list[list[str]]], doc_ids: list[int], k: int,
                             max_seq_length: int, short_seq_prob: float, masked_lm_prob: float,
                             max_predictions_per_seq: int, replacement_words: Sequence[str],
                             whole_word_mask: bool, rng: random.Random,
                             preferred: frozenset[str] | None = None, preferred_share: float = 0.1) -> list[Instance]:
    """All instances whose ``A`` segment comes from ``documents[k]`` (one pass)."""
    document = documents[k]
    max_num_tokens = max_seq_length - 3                 # room for [CLS] A [SEP] B [SEP]
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    instances: list[Instance] = []
    chunk: list[list[str]] = []
    chunk_length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        chunk_length += len(document[i])
        if i == len(document) - 1 or chunk_length >= target_seq_length:
            # A = chunk[:a_end]; B = chunk[a_end:] or a random run from another document
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            tokens_a = [t for sentence in chunk[:a_end] for t in sentence]
            tokens_b: list[str] = []
            if len(chunk) == 1 or rng.random() < 0.5:
                is_random_next = True
                target_b_length = target_seq_length - len(tokens_a)
                # Deviation: the original retries 10 times to avoid the own document;
                # we draw uniformly among the *other* documents, so a negative is always foreign.
                other = rng.randint(0, len(documents) - 2)
                if other >= k:
                    other += 1
                random_document = documents[other]
                for j in range(rng.randint(0, len(random_document) - 1), len(random_document)):
                    tokens_b.extend(random_document[j])
                    if len(tokens_b) >= target_b_length:
                        break
                # the sentences of the chunk that B did not use are put back for the next chunk
                i -= len(chunk) - a_end
                doc_b = other
            else:
                is_random_next = False
                tokens_b = [t for sentence in chunk[a_end:] for t in sentence]
                doc_b = k
            truncate_pair_randomly(tokens_a, tokens_b, max_num_tokens, rng)
            if not tokens_a or not tokens_b:            # cannot happen for non-empty sentences
                raise AssertionError("an empty segment after truncation")

            tokens = ["[CLS]"] + tokens_a + ["[SEP]"] + tokens_b + ["[SEP]"]
            segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
            tokens, positions, labels = create_masked_lm_predictions(
                tokens, masked_lm_prob, max_predictions_per_seq, replacement_words, rng, whole_word_mask,
                preferred, preferred_share)
            instances.append(Instance(tokens, segment_ids, is_random_next, positions, labels,
                                      doc_ids[k], doc_ids[doc_b]))
            chunk = []
            chunk_length = 0
        i += 1
    return instances


def create_pretraining_instances(documents: list[list[list[str]]], tokenizer, max_seq_length: int = 128,
                                 short_seq_prob: float = 0.1, masked_lm_prob: float = 0.15,
                                 max_predictions_per_seq: int = 20, dupe_factor: int = 1,
                                 whole_word_mask: bool = False, seed: int = 12345,
                                 preferred_words: frozenset[str] | None = None,
                                 preferred_share: float = 0.1) -> list[Instance]:
    """Documents (docs -> sentences -> word pieces) -> shuffled list of ``Instance``.

    ``preferred_words``: masked first, up to ``preferred_share`` of a sequence's tokens (sentiment-aware
    masking: :func:`create_masked_lm_predictions`); None: the original recipe.

    The recipe is in the module docstring. All randomness comes from ``random.Random(seed)``:
    the same inputs and seed give the same instances. ``Instance.doc_index_a/b`` index
    ``documents`` as given (empty documents are skipped but keep their index).
    """
    if max_seq_length < 5:
        raise ValueError(f"max_seq_length={max_seq_length} is too small: [CLS] A [SEP] B [SEP] needs at least 5")
    if not 0.0 <= masked_lm_prob <= 1.0:
        raise ValueError(f"masked_lm_prob={masked_lm_prob} must be in [0, 1]")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"short_seq_prob={short_seq_prob} must be in [0, 1]")
    if max_predictions_per_seq < 1:
        raise ValueError(f"max_predictions_per_seq={max_predictions_per_seq} must be at least 1")
    if dupe_factor < 1:
        raise ValueError(f"dupe_factor={dupe_factor} must be at least 1")
    if not 0.0 <= preferred_share <= 1.0:
        raise ValueError(f"preferred_share={preferred_share} must be in [0, 1]")
    kept: list[list[list[str]]] = []
    doc_ids: list[int] = []
    for d, doc in enumerate(documents):
        if isinstance(doc, str) or any(isinstance(s, str) for s in doc):
            raise TypeError(f"document {d} must be a list of sentences, each a list of word pieces "
                            f"(use tokenize_documents first)")
        sentences = [list(s) for s in doc if len(s) > 0]
        if sentences:
            kept.append(sentences)
            doc_ids.append(d)
    if len(kept) < 2:
        raise ValueError(f"need at least 2 non-empty documents for random next segments, got {len(kept)}")

    rng = random.Random(seed)
    replacement_words = _replacement_vocab(tokenizer)
    order = list(range(len(kept)))
    rng.shuffle(order)                                  # as the original shuffles its documents
    shuffled = [kept[o] for o in order]
    shuffled_ids = [doc_ids[o] for o in order]
    instances: list[Instance] = []
    for _ in range(dupe_factor):
        for k in range(len(shuffled)):
            instances.extend(_instances_from_document(
                shuffled, shuffled_ids, k, max_seq_length, short_seq_prob, masked_lm_prob,
                max_predictions_per_seq, replacement_words, whole_word_mask, rng, preferred_words, preferred_share))
    rng.shuffle(instances)
    return instances


def instances_to_arrays(instances: Sequence[Instance], tokenizer, max_seq_length: int,
                        max_predictions_per_seq: int = 20) -> dict[str, np.ndarray]:
    """Pack instances into padded arrays (N instances, T = max_seq_length, P = max_predictions_per_seq).

    - ``input_ids`` (N, T) int64, padded with ``[PAD]``; ``token_type_ids`` (N, T) int64;
      ``attention_mask`` (N, T) int64, 1 on real tokens.
    - ``labels`` (N, T) int64: the original token id at masked positions, -100 elsewhere
      (what Hugging Face's ``BertForPreTraining`` takes; the MLM loss ignores -100).
    - ``masked_lm_positions``, ``masked_lm_ids`` (N, P) int64 and ``masked_lm_weights`` (N, P)
      float32 (1 for a real prediction, 0 for padding): google-research/bert's format, which
      lets the MLM head project only the ~20 masked positions onto the vocabulary.
    - ``next_sentence_labels`` (N,) int64: 0 = B follows A ("IsNext"), 1 = B is random.
    """
    N, T, P = len(instances), max_seq_length, max_predictions_per_seq
    if N == 0:
        raise ValueError("no instances to pack")
    lengths = np.fromiter((len(x.tokens) for x in instances), np.int64, N)                 # (N,)
    n_masked = np.fromiter((len(x.masked_lm_positions) for x in instances), np.int64, N)   # (N,)
    if (lengths > T).any():
        n = int(np.argmax(lengths > T))
        raise ValueError(f"instance {n} has {lengths[n]} tokens, more than max_seq_length={T}")
    if (n_masked > P).any():
        n = int(np.argmax(n_masked > P))
        raise ValueError(f"instance {n} has {n_masked[n]} masked positions, more than max_predictions_per_seq={P}")
    # every instance's tokens (and masked positions) one after the other, then scattered into the padded rows:
    # one dictionary lookup per token and a few whole-array operations, not a loop of small copies per instance
    ids = tokenizer.convert_tokens_to_ids
    rows, cols = _ragged_index(lengths)                                                    # (total,) each
    token_ids = np.array(ids(chain.from_iterable(x.tokens for x in instances)), dtype=np.int64)
    segments = np.fromiter(chain.from_iterable(x.segment_ids for x in instances), np.int64, len(rows))
    input_ids = np.full((N, T), tokenizer.pad_token_id, dtype=np.int64)     # (N, T)
    token_type_ids = np.zeros((N, T), dtype=np.int64)                       # (N, T)
    attention_mask = np.zeros((N, T), dtype=np.int64)                       # (N, T)
    input_ids[rows, cols] = token_ids
    token_type_ids[rows, cols] = segments
    attention_mask[rows, cols] = 1

    m_rows, m_cols = _ragged_index(n_masked)                                                # (masked,) each
    positions = np.fromiter(chain.from_iterable(x.masked_lm_positions for x in instances), np.int64, len(m_rows))
    label_ids = np.array(ids(chain.from_iterable(x.masked_lm_labels for x in instances)), dtype=np.int64)
    labels = np.full((N, T), IGNORE_INDEX, dtype=np.int64)                  # (N, T)
    masked_lm_positions = np.zeros((N, P), dtype=np.int64)                  # (N, P)
    masked_lm_ids = np.zeros((N, P), dtype=np.int64)                        # (N, P)
    masked_lm_weights = np.zeros((N, P), dtype=np.float32)                  # (N, P)
    labels[m_rows, positions] = label_ids
    masked_lm_positions[m_rows, m_cols] = positions
    masked_lm_ids[m_rows, m_cols] = label_ids
    masked_lm_weights[m_rows, m_cols] = 1.0
    next_sentence_labels = np.fromiter((x.is_random_next for x in instances), np.int64, N)   # (N,)
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
            "labels": labels, "masked_lm_positions": masked_lm_positions, "masked_lm_ids": masked_lm_ids,
            "masked_lm_weights": masked_lm_weights, "next_sentence_labels": next_sentence_labels}



def _ragged_index(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of every element of rows of ``lengths`` laid end to end: [2, 1] -> ([0, 0, 1], [0, 1, 0])."""
    rows = np.repeat(np.arange(len(lengths)), lengths)                      # (sum(lengths),)
    starts = np.cumsum(lengths) - lengths                                   # (N,) where each row begins
    return rows, np.arange(len(rows)) - starts[rows]
