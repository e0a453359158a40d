"""Chapter 4 exercises: splitting into heads, merging them back, and the padding mask.

Check with:  bert-from-scratch check 4
The grader also calls your functions on READ-ONLY arrays (do not modify an input, or a cache, in
place: copy first), on float32 inputs (float32 in, float32 out: create arrays with dtype=x.dtype).
"""
import numpy as np  # noqa: F401


def split_heads(x, num_heads: int):
    """(B, T, H) -> (B, nh, T, d) with d = H / nh; head h holds features h*d .. (h+1)*d - 1 of each token.

    Hint: reshape to (B, T, nh, d), then transpose the T and nh axes. A plain reshape to
    (B, nh, T, d) has the right shape and the wrong content.
    """
    raise NotImplementedError("chapter 4: split_heads")


def merge_heads(x):
    """(B, nh, T, d) -> (B, T, nh * d): the inverse of split_heads."""
    raise NotImplementedError("chapter 4: merge_heads")


def attention_mask_bias(attention_mask, dtype=np.float32):
    """(B, T) mask (1 = real token, 0 = padding) -> (B, 1, 1, T) additive bias of the given dtype.

    0.0 where the mask is 1, -10000.0 where it is 0 (the original BERT's value). The two
    singleton axes broadcast over heads and query positions when added to the (B, nh, T, T) scores.
    """
    raise NotImplementedError("chapter 4: attention_mask_bias")
