"""Chapter 12 exercises: the classification head and the metric.

Check with:  bert-from-scratch check 12
The grader also calls your functions on READ-ONLY arrays (do not modify an input, or a cache, in
place: copy first), on float32 inputs (float32 in, float32 out: create arrays with dtype=x.dtype)
and on logits ~1000.
"""
import numpy as np  # noqa: F401


def classifier_forward(pooled, weight, bias, labels):
    """logits = pooled @ weight.T + bias, loss = mean over the batch of -log softmax(logits)[label].

    pooled: (B, H) (the pooler's output for [CLS]); weight: (K, H); bias: (K,); labels: (B,) ints.
    Returns (loss as a float, logits (B, K), cache). Subtract each row's max before exp (logits ~1000
    must not overflow), in the backward too if it recomputes the softmax.
    """
    raise NotImplementedError("chapter 12: classifier_forward")


def classifier_backward(cache):
    """(dpooled (B, H), dweight (K, H), dbias (K,)) of the mean loss. dlogits = (softmax - onehot) / B."""
    raise NotImplementedError("chapter 12: classifier_backward")


def macro_f1(predictions, labels, num_labels):
    """Macro-averaged F1: the mean over classes c of 2 TP_c / (2 TP_c + FP_c + FN_c) (0 if the
    denominator is 0). predictions, labels: (N,) ints in [0, num_labels). Returns a float."""
    raise NotImplementedError("chapter 12: macro_f1")
