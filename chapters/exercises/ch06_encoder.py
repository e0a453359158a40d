"""Chapter 6 exercises: the feed-forward sub-block with its residual connection and LayerNorm.

Check with:  bert-from-scratch check 6
The grader also calls your functions on READ-ONLY arrays (do not modify an input, or a cache, in
place: copy first), on float32 inputs (float32 in, float32 out: create arrays with dtype=x.dtype).
You may reuse the package's layers (or your own from chapter 5):
"""
import numpy as np  # noqa: F401

from bert_from_scratch.nn.layers import (gelu_backward, gelu_forward, layernorm_backward,  # noqa: F401
                                      layernorm_forward, linear_backward, linear_forward)


def ffn_block_forward(x, w1, b1, w2, b2, gamma, beta, eps=1e-12):
    """y = LayerNorm(x + FFN(x)),  FFN(x) = gelu(x W1^T + b1) W2^T + b2   (no dropout here).

    x: (B, T, H); w1: (I, H); b1: (I,); w2: (H, I); b2: (H,); gamma, beta: (H,).
    Weights are [out, in] as torch.nn.Linear. Returns (y (B, T, H), cache).
    """
    raise NotImplementedError("chapter 6: ffn_block_forward")


def ffn_block_backward(dy, cache):
    """Gradients given dy (B, T, H), as a dict with keys
    "dx", "dw1", "db1", "dw2", "db2", "dgamma", "dbeta" (each the shape of its input).

    x reaches the output along two paths -- through the FFN and straight into the residual
    sum -- so its gradient is the sum of both (this is the "residual stream").
    """
    raise NotImplementedError("chapter 6: ffn_block_backward")
