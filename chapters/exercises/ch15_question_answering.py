"""Chapter 15 exercises: the span loss, its backward, and decoding the best answer span.

Check with:  bert-from-scratch check 15
The grader also calls your functions on READ-ONLY arrays (copy before modifying) and on logits ~1000.
"""
import numpy as np  # noqa: F401


def span_loss_forward(start_logits, end_logits, start_positions, end_positions):
    """start_logits, end_logits: (B, T); start_positions, end_positions: (B,) ints.
    loss = (CE(start_logits, start_positions) + CE(end_logits, end_positions)) / 2, each CE the mean over
    the batch of -log softmax(row)[position]. Returns (loss as a float, cache)."""
    raise NotImplementedError("chapter 15: span_loss_forward")


def span_loss_backward(cache):
    """(dstart_logits (B, T), dend_logits (B, T)) of the loss: (softmax - onehot) / (2 B) each."""
    raise NotImplementedError("chapter 15: span_loss_backward")


def best_span(start_logits, end_logits, context_mask, max_answer_len):
    """start_logits, end_logits: (T,); context_mask: (T,) 1 where the answer may be (the context), else 0.
    p_start, p_end = softmax of the logits over the context positions only (the others get probability 0).
    Return (s, e, score): the s <= e < s + max_answer_len, both in the context, maximising
    score = p_start[s] * p_end[e]."""
    raise NotImplementedError("chapter 15: best_span")
