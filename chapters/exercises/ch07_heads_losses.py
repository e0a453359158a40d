"""Chapter 7 exercises: the masked-LM gather and the cross-entropy loss with ignored rows.

Check with:  bert-from-scratch check 7
The grader also calls your functions on READ-ONLY arrays (do not modify an input, or a cache, in
place: copy first), on float32 inputs (float32 in, float32 out: create arrays with dtype=x.dtype),
on logits ~1000 and with every label -100.
"""
import numpy as np  # noqa: F401

IGNORE_INDEX = -100


def gather_masked(sequence_output, labels):
    """Pick the positions that have an MLM label.

    sequence_output: (B, T, H); labels: (B, T) ints, -100 where nothing is predicted.
    Returns (rows (N, H), targets (N,)) for the N labelled positions, in row-major order
    (batch 0's positions left to right, then batch 1's ...). Hint: np.nonzero.
    Projecting only these N rows onto the vocabulary is what makes the MLM head cheap.
    """
    raise NotImplementedError("chapter 7: gather_masked")


def cross_entropy_forward(logits, labels):
    """Mean over rows whose label is not -100 of  logsumexp(logits_i) - logits_i[label_i].

    logits: (N, K); labels: (N,) ints. Returns (loss as a float, cache).
    Subtract each row's max before exp (large logits must not overflow); if no row counts, the loss is 0.
    """
    raise NotImplementedError("chapter 7: cross_entropy_forward")


def cross_entropy_backward(cache):
    """dL/dlogits (N, K): (softmax(logits) - onehot(label)) / n_counted on counted rows, 0 on ignored rows."""
    raise NotImplementedError("chapter 7: cross_entropy_backward")
