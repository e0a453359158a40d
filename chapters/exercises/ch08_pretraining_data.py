"""Chapter 8 exercise: BERT's masking recipe (graded by statistics over thousands of sequences).

Check with:  bert-from-scratch check 8
"""
import random  # noqa: F401


def mask_tokens(tokens, rng, vocab_words, masked_lm_prob=0.15, max_predictions=20):
    """Choose positions to predict and corrupt them, as google-research/bert does.

    tokens: list of str, e.g. ["[CLS]", "the", "cat", "[SEP]", "sat", "[SEP]"] (do not modify it).
    rng: a ``random.Random`` -- draw ALL randomness from it (rng.shuffle, rng.random, rng.randrange).
    vocab_words: the words a random replacement is drawn from.

    1. candidates = every position whose token is not [CLS] or [SEP]; shuffle them;
    2. n = min(max_predictions, max(1, round(len(tokens) * masked_lm_prob))); take n candidates;
    3. each chosen position becomes "[MASK]" with probability 0.8, a random word of vocab_words
       with 0.1, and keeps its token with 0.1 -- one independent draw PER POSITION (not one per
       sequence). The grader checks that equally seeded rngs give equal results whatever the
       global ``random`` / ``np.random`` state, and differently seeded ones different results.
    Returns (output tokens (a new list, same length), positions (sorted), labels = the ORIGINAL
    tokens at those positions).
    """
    raise NotImplementedError("chapter 8: mask_tokens")
