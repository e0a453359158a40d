r"""Metrics for token classification: per-word accuracy, entity-span F1 (seqeval), confusions, a baseline.

- :func:`token_accuracy`: the share of labelled words whose predicted tag is right;
- :func:`get_entities` and :func:`span_f1`: entity spans read from IOB2 tags and scored as
  `seqeval <https://github.com/chakki-works/seqeval>`_ does by default (its conlleval-compatible
  mode): a predicted span counts only when its type, first and last word all equal a true span's.
  With :math:`C` = spans in both, :math:`P` = predicted spans, :math:`T` = true spans:

  .. math::
      \text{precision} = \frac{|C|}{|P|},\quad \text{recall} = \frac{|C|}{|T|},\quad
      F_1 = \frac{2\,\text{precision}\cdot\text{recall}}{\text{precision}+\text{recall}}

  (each 0 when its denominator is 0). Chunks follow conlleval's rules: an ``I-X`` after ``O`` or after
  another type *starts* a span (it is not dropped), and a span ends at ``O``, ``B-``, or a change of type;
- :func:`most_confused`: the largest off-diagonal cells of the confusion matrix;
- :func:`majority_tag_baseline`: every word gets the tag it had most often in training (unseen words:
  the most frequent tag overall): what a model must beat to have learned anything from context;
- :func:`document_bootstrap_interval`: a 95% interval for a word accuracy whose words come in
  documents (words of one document are not independent, so resample whole documents).
"""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from .metrics import confusion_matrix


def token_accuracy(true, pred) -> float:
    """Flat sequences of tag ids (or names) -> share equal; NaN for none."""
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"true has shape {true.shape}, pred {pred.shape}")
    return float((true == pred).mean()) if true.size else float("nan")


# ---- seqeval's chunking (default, conlleval-compatible mode) ---------------------------------------
def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def get_entities(tags) -> list[tuple[str, int, int]]:
    """IOB2 tags (a list, or a list of lists: then joined with an ``O`` between sentences) ->
    ``[(type, first, last), ...]`` with inclusive word indices, as ``seqeval.metrics.sequence_labeling.get_entities``.

    >>> get_entities(["B-PER", "I-PER", "O", "B-LOC"])
    [('PER', 0, 1), ('LOC', 3, 3)]
    """
    if any(isinstance(s, (list, tuple)) for s in tags):
        tags = [t for sentence in tags for t in list(sentence) + ["O"]]
    prev_tag, prev_type, begin, chunks = "O", "", 0, []
    for i, chunk in enumerate(list(tags) + ["O"]):
        tag = chunk[0]
        type_ = chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def span_f1(true_tags, pred_tags) -> dict:
    """Micro precision/recall/F1 over entity spans, and the same per type: seqeval's ``f1_score`` and
    ``classification_report`` numbers. Inputs: lists of sentences of IOB2 tag strings."""
    if len(true_tags) != len(pred_tags) or any(len(a) != len(b) for a, b in zip(true_tags, pred_tags)):
        raise ValueError("true and predicted tags must have the same sentences and lengths")
    true_set, pred_set = set(get_entities(true_tags)), set(get_entities(pred_tags))

    def prf(t: set, p: set) -> dict:
        c = len(t & p)
        precision = c / len(p) if p else 0.0
        recall = c / len(t) if t else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "support": len(t)}

    out = prf(true_set, pred_set)
    types = sorted({e[0] for e in true_set | pred_set})
    out["per_type"] = {k: prf({e for e in true_set if e[0] == k}, {e for e in pred_set if e[0] == k})
                       for k in types}
    return out


def most_confused(true, pred, label_names, top: int = 5) -> list[tuple[str, str, int, float]]:
    """The ``top`` largest errors ``(true tag, predicted tag, count, share of the true tag's words)``."""
    K = len(label_names)
    cm = confusion_matrix(true, pred, K)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None, kind="stable")[::-1][:top]
    rows = []
    for flat in order:
        i, j = divmod(int(flat), K)
        if off[i, j] == 0:
            break
        rows.append((label_names[i], label_names[j], int(off[i, j]), float(off[i, j] / cm[i].sum())))
    return rows


def majority_tag_baseline(train_sentences, test_sentences) -> dict:
    """Tag each test word with its most frequent training tag (ties: the tag seen first); unseen words get
    the most frequent tag overall. Returns accuracy, seen-word accuracy and the share of unseen words."""
    by_word: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for s in train_sentences:
        for w, t in zip(s.words, s.tags):
            by_word[w][t] += 1
            overall[t] += 1
    fallback = overall.most_common(1)[0][0]
    best = {w: c.most_common(1)[0][0] for w, c in by_word.items()}
    correct = seen_correct = seen = total = 0
    for s in test_sentences:
        for w, t in zip(s.words, s.tags):
            guess = best.get(w)
            total += 1
            if guess is not None:
                seen += 1
                seen_correct += guess == t
            correct += (guess if guess is not None else fallback) == t
    return {"accuracy": correct / total, "seen_accuracy": seen_correct / max(seen, 1),
            "unseen_share": 1 - seen / total, "fallback_tag": fallback, "words": total}


def document_bootstrap_interval(correct_per_doc, words_per_doc, n_boot: int = 2000, seed: int = 0,
                                level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``sum(correct) / sum(words)`` over documents resampled with replacement."""
    c = np.asarray(correct_per_doc, dtype=np.float64)
    n = np.asarray(words_per_doc, dtype=np.float64)
    if len(c) == 0:
        return (float("nan"), float("nan"))
    draws = np.random.default_rng(seed).integers(0, len(c), size=(n_boot, len(c)))    # (n_boot, D)
    acc = c[draws].sum(axis=1) / n[draws].sum(axis=1)
    lo, hi = np.quantile(acc, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))
