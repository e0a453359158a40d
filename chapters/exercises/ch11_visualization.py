"""Chapter 11 exercises: two ways to summarise attention maps.

Check with:  bert-from-scratch check 11
The grader also calls your functions on READ-ONLY arrays (do not modify an input, or a cache, in
place: copy first), on float32 inputs (float32 in, float32 out: create arrays with dtype=x.dtype).
"""
import numpy as np  # noqa: F401


def attention_entropy(att):
    """att: (L, H, T, T) attention probabilities (rows sum to 1) -> (L, H) mean entropy per head.

    For each query row i: -sum_j A[i, j] * log(A[i, j]) in nats (np.log), with 0 * log 0 = 0;
    then the mean over the query rows. A head that looks at one token has entropy ~0; a uniform
    head has log(T).
    """
    raise NotImplementedError("chapter 11: attention_entropy")


def attention_rollout(att, residual_weight=0.5):
    """Attention rollout (Abnar & Zuidema 2020): att (L, H, T, T) -> R (L, T, T).

    Per layer: average the heads, mix in the residual connection and renormalise the rows,
        Â_l = rownorm((1 - a) * mean_h A_l + a * I)      (a = residual_weight)
    then multiply from the bottom up:  R_0 = Â_0,  R_l = Â_l @ R_{l-1}.
    """
    raise NotImplementedError("chapter 11: attention_rollout")
