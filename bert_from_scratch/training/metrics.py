r"""Metrics with their intervals: what a held-out number means needs its uncertainty next to it.

- :func:`confusion_matrix`, :func:`accuracy_from_confusion`, :func:`macro_f1_from_confusion` for
  classification (macro-F1 over the classes that occur, as scikit-learn's ``average="macro"``);
- :func:`wilson_interval`: a 95% interval for an accuracy measured on ``n`` examples;
- :func:`roc_auc` and :func:`auc_interval` (Hanley & McNeil): a threshold- and balance-free score of a
  binary ranking, used for next-sentence prediction, whose majority class is not 50%.
"""
from __future__ import annotations


import numpy as np


def confusion_matrix(y_true, y_pred, num_labels: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape}, y_pred {y_pred.shape}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_labels):
            raise ValueError(f"{name} holds labels outside [0, {num_labels}): {y.min()}..{y.max()}")
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def accuracy_from_confusion(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def macro_f1_from_confusion(cm: np.ndarray) -> float:
    """Mean over classes present (as truth or prediction) of ``2 TP / (2 TP + FP + FN)``."""
    tp = np.diag(cm).astype(np.float64)                                 # (K,)
    fp = cm.sum(axis=0) - tp                                            # predicted k, truly not k
    fn = cm.sum(axis=1) - tp                                            # truly k, predicted not k
    denom = 2 * tp + fp + fn
    present = denom > 0
    if not present.any():
        return float("nan")
    return float(np.mean(2 * tp[present] / denom[present]))


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% (z=1.96) Wilson score interval of an accuracy measured on ``n`` independent examples.

    The held-out set is small (about a thousand NSP pairs by default), so the report shows how far
    the model's accuracy could move by chance next to the baselines it is compared with."""
    if n <= 0:
        return (0.0, 1.0)
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve: the probability that a random positive (label 1) scores above a random
    negative, ties counting one half (the Mann-Whitney U statistic over n_pos * n_neg).

    NSP's held-out accuracy has to be read against the majority class (the recipe makes more random-next
    pairs than true ones); the AUC does not depend on the class balance or on a threshold: 0.5 is no
    signal whatever the balance, 1.0 a perfect ranking. NaN when one class is missing."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    n_pos = int((labels == 1).sum())
    n_neg = int(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks (1-based) over runs of tied scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    u = ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auc_interval(auc, labels, z: float = 1.96) -> tuple[float, float]:
    """Approximate 95% interval of a ROC AUC (Hanley & McNeil 1982 standard error) on ``labels``."""
    if auc is None or not np.isfinite(auc):
        return (float("nan"), float("nan"))
    labels = np.asarray(labels)
    n_pos, n_neg = int((labels == 1).sum()), int((labels != 1).sum())
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    half = z * float(np.sqrt(max(var, 0.0)))
    return (max(0.0, auc - half), min(1.0, auc + half))
