"""Chapter 14 exercises: labels per word, and the token-classification head.

Check with:  bert-from-scratch check 14
The grader also calls your functions on READ-ONLY arrays (copy before modifying), on float32 inputs
(float32 in, float32 out) and on logits ~1000.
"""
import numpy as np  # noqa: F401


def align_labels(pieces_per_word, word_labels):
    """Labels for ``[CLS] pieces(word_0) pieces(word_1) ... [SEP]``.

    pieces_per_word: how many word pieces each word became (0 for a word the tokenizer dropped);
    word_labels: one int label per word. A word's label goes on its FIRST piece; its other pieces, [CLS]
    and [SEP] get -100 (ignored by the loss); a word with 0 pieces contributes nothing.
    Returns a list of ints of length sum(pieces_per_word) + 2.
    """
    raise NotImplementedError("chapter 14: align_labels")


def token_classifier_forward(hidden, weight, bias, labels):
    """logits = hidden @ weight.T + bias: (B, T, H) -> (B, T, K); loss = the mean over the positions whose
    label is not -100 of -log softmax(logits)[label]. labels: (B, T) ints.
    Returns (loss as a float, logits, cache). Subtract each row's max before exp."""
    raise NotImplementedError("chapter 14: token_classifier_forward")


def token_classifier_backward(cache):
    """(dhidden (B, T, H), dweight (K, H), dbias (K,)) of the mean loss.
    dlogits = (softmax - onehot) / n on the n labelled positions, 0 on the others."""
    raise NotImplementedError("chapter 14: token_classifier_backward")
