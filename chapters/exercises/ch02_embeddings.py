"""Chapter 2 exercises: the embedding layer and its backward (a scatter-add).

Check with:  bert-from-scratch check 2
The grader also calls your functions on READ-ONLY arrays (do not modify an input, or a cache, in
place: copy first), on float32 inputs (float32 in, float32 out: create arrays with dtype=x.dtype).
"""
import numpy as np  # noqa: F401


def embeddings_forward(input_ids, token_type_ids, word_emb, pos_emb, type_emb):
    """The sum of three lookups (BERT then applies LayerNorm and dropout, not asked here).

    input_ids, token_type_ids: (B, T) ints; word_emb: (V, H); pos_emb: (P, H) with P >= T;
    type_emb: (K, H).  Returns x: (B, T, H) with

        x[b, t] = word_emb[input_ids[b, t]] + pos_emb[t] + type_emb[token_type_ids[b, t]]

    Hint: fancy indexing ``word_emb[input_ids]`` is already (B, T, H).
    """
    raise NotImplementedError("chapter 2: embeddings_forward")


def embeddings_backward(dx, input_ids, token_type_ids, word_shape, pos_shape, type_shape):
    """Gradients of the three tables given dx = dL/dx, (B, T, H).

    Returns (dword (V, H), dpos (P, H), dtype (K, H)), zeros for rows no position used.
    A lookup's backward is a scatter-add: row v of dword is the SUM of dx over every (b, t)
    whose id is v. Careful: ``dword[ids] += dx`` does NOT add repeated ids twice (numpy
    buffers the writes); ``np.add.at`` does. Position t is used by every sequence of the batch.
    """
    raise NotImplementedError("chapter 2: embeddings_backward")
