r"""The task heads on top of the encoder, each a forward/backward pair (same conventions as ``blocks.py``).

- masked LM (``cls.predictions``): dense -> GELU -> LayerNorm -> decoder tied to the word
  embedding, plus its own bias: ``logits = LN(gelu(h W^T + b)) E^T + b_dec``, (N, H) -> (N, V);
- next-sentence prediction (``cls.seq_relationship``): a linear layer on the pooled output, (B, H) -> (B, 2),
  label 0 = "B follows A", 1 = "B is random";
- sequence classification (``classifier``): dropout then a linear layer on the pooled output, (B, H) -> (B, K);
  what it reads (:func:`sequence_features_forward`): the pooler's output (Hugging Face's ``pooling="cls"``) or the
  last layer's mean over the real tokens (``pooling="mean"``, Sentence-BERT's).

The decoder's weight *is* ``bert.embeddings.word_embeddings.weight``: its gradient is added to the
one the embedding lookup accumulates (``G.add``), which is all weight tying takes.
"""
from __future__ import annotations

from typing import NamedTuple

from ..config import BertConfig
from ..nn.layers import (linear_bias_in_product_backward, linear_bias_in_product_forward, masked_mean_backward,
                         masked_mean_forward)
from .blocks import dense_backward, dense_forward, norm_backward, norm_forward
from .params import Scope

WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"


class MLMHeadCache(NamedTuple):
    dense: tuple
    gelu: tuple
    layernorm: tuple
    decoder: tuple


def mlm_head_forward(rows, P: Scope, ops, cfg: BertConfig):
    """rows: (N..., H) hidden states at the predicted positions -> logits (N..., V). ``P``: scope ``cls.predictions.``
    over the model's params (the tied decoder is read from the same dict)."""
    h, c_dense = dense_forward(rows, P / "transform.dense")
    g, c_gelu = ops.gelu_forward(h)
    t, c_ln = norm_forward(g, P / "transform.LayerNorm", ops, cfg)
    decoder = P.tensors[WORD_EMBEDDINGS]                                                   # (V, H), tied
    logits, c_dec = linear_bias_in_product_forward(t, decoder, P["bias"])                  # (N..., V)
    return logits, MLMHeadCache(c_dense, c_gelu, c_ln, c_dec)


def mlm_head_backward(dlogits, cache: MLMHeadCache, G: Scope, ops):
    """dlogits: (N..., V) -> drows (N..., H); ``G``: scope ``cls.predictions.`` over the gradient dict."""
    dt, dw_dec, db = linear_bias_in_product_backward(dlogits, cache.decoder)
    Scope(G.tensors).add(WORD_EMBEDDINGS, dw_dec)            # tied: summed with the input lookup's gradient
    G.add("bias", db)
    dg = norm_backward(dt, cache.layernorm, G / "transform.LayerNorm", ops)
    dh = ops.gelu_backward(dg, cache.gelu)
    return dense_backward(dh, cache.dense, G / "transform.dense")


def nsp_head_forward(pooled, P: Scope):
    """pooled: (B, H) -> logits (B, 2). ``P``: scope ``cls.seq_relationship.``."""
    return dense_forward(pooled, P)


def nsp_head_backward(dlogits, cache, G: Scope):
    """dlogits: (B, 2) -> dpooled (B, H)."""
    return dense_backward(dlogits, cache, G)


#: what a sequence classifier reads: "cls", the pooler's output (dense + tanh on [CLS], Hugging Face's
#: BertForSequenceClassification), or "mean", the last layer averaged over the real tokens (Sentence-BERT)
POOLINGS = ("cls", "mean")


def check_pooling(pooling) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(map(repr, POOLINGS))}; got {pooling!r}")
    return pooling


def sequence_features_forward(sequence, pooled, attention_mask, pooling: str):
    """sequence (B, T, H), pooled (B, H) (the pooler's output), attention_mask (B, T) or None -> (features (B, H),
    cache): ``pooled`` itself for "cls", the mean of ``sequence`` over the mask's real tokens for "mean"."""
    if pooling == "cls":
        return pooled, None
    return masked_mean_forward(sequence, attention_mask)


def sequence_features_backward(dfeatures, cache, pooling: str):
    """dfeatures (B, H) -> (dsequence (B, T, H) or None, dpooled (B, H) or None), the gradient of what it read."""
    if pooling == "cls":
        return None, dfeatures
    return masked_mean_backward(dfeatures, cache), None


class ClassifierHeadCache(NamedTuple):
    dropout: object
    linear: tuple


def classifier_head_forward(pooled, P: Scope, ops, cfg: BertConfig, rng, training: bool, row_offset: int = 0):
    """pooled: (B, H) or (B, T, H) -> logits (B, K) / (B, T, K). ``P``: scope ``classifier.``; ``row_offset``:
    the global row of ``pooled[0]`` (a data-parallel shard: the dropout mask is the whole batch's)."""
    dropped, c_drop = ops.dropout_forward(pooled, cfg.hidden_dropout_prob, rng, training, row_offset=row_offset)
    logits, c_lin = dense_forward(dropped, P)
    return logits, ClassifierHeadCache(c_drop, c_lin)


def classifier_head_backward(dlogits, cache: ClassifierHeadCache, G: Scope, ops):
    """dlogits: (B, K) -> dpooled (B, H)."""
    ddropped = dense_backward(dlogits, cache.linear, G)
    return ops.dropout_backward(ddropped, cache.dropout)
