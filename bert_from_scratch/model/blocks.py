r"""The encoder's blocks, each a forward/backward pair of functions (llm.c style).

Data flow (B = batch, T = tokens, H = hidden size, nh = heads, d = H / nh)::

    input_ids (B, T) ─ embeddings ─> (B, T, H) ─ L x [attention block ─> FFN block] ─> sequence (B, T, H)
    sequence[:, 0] ─ pooler (dense + tanh) ─> pooled (B, H)

Every block has the same shape of signature:

- ``*_forward(x, P, ops, ...) -> (y, cache)``: ``P`` is a :class:`~.params.Scope` of the block's
  parameters (Hugging Face names), ``ops`` the model's :class:`~bert_from_scratch.nn.backend.Backend`
  (GELU, LayerNorm, dropout and the attention core come from it), and the cache a named tuple of
  exactly what the backward needs;
- ``*_backward(dy, cache, P, G, ops) -> dx``: accumulates the parameter gradients into ``G`` (a
  scope over the gradient dict) and returns the gradient of the block's input.

Dropout seeds are drawn from ``rng`` in a fixed order (embeddings; per layer: attention
probabilities, attention output, FFN output), so a seeded run is reproducible on every backend.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

from ..config import BertConfig
from ..nn.attention import attention_probabilities, attention_probabilities_backward
from ..nn.layers import embedding_cache, linear_backward, linear_forward, tanh_backward, tanh_forward
from ..nn.xp import get_array_module
from .attention_rows import attention_at_query_rows_backward, attention_at_query_rows_forward
from .params import Scope


# =======================================================================================
# Layers that own parameters, addressed by Hugging Face's module names: ``P / "output.dense"``
# =======================================================================================
def dense_forward(x, P: Scope):
    """A Linear layer (``P["weight"]`` (out, in), ``P["bias"]`` (out,)): (N..., in) -> (N..., out)."""
    return linear_forward(x, P["weight"], P["bias"])


def dense_backward(dy, cache, G: Scope):
    """Accumulates dW, db into ``G``; returns dx."""
    dx, dw, db = linear_backward(dy, cache)
    G.add("weight", dw)
    G.add("bias", db)
    return dx


def norm_forward(x, P: Scope, ops, cfg: BertConfig):
    """A LayerNorm (``P["weight"]`` = gamma, ``P["bias"]`` = beta) over the last axis, eps from the config."""
    return ops.layernorm_forward(x, P["weight"], P["bias"], cfg.layer_norm_eps)


def norm_backward(dy, cache, G: Scope, ops):
    """Accumulates dgamma, dbeta into ``G``; returns dx."""
    dx, dgamma, dbeta = ops.layernorm_backward(dy, cache)
    G.add("weight", dgamma)
    G.add("bias", dbeta)
    return dx


def output_forward(h, x, P: Scope, ops, cfg: BertConfig, rng, training: bool, row_offset: int = 0, row_ids=None):
    """The end of the attention and FFN blocks: y = LayerNorm(x + dropout(dense(h))), ``x`` the block's input.

    The dense layer's matmul, then its bias, the dropout, the residual and the LayerNorm as one fused op
    (``ops.bias_dropout_add_layernorm_forward``). ``P``: the block's scope (``output.dense.*``,
    ``output.LayerNorm.*``). h: (B, T, in), x: (B, T, H) -> (y (B, T, H), cache); or h: (M, in), x: (M, H) for
    M gathered rows, with ``row_ids`` (M,) their global rows (the dropout mask's keys, see ``nn/layers.py``)."""
    o, c_dense = linear_forward(h, P["output.dense.weight"], None)                     # (B, T, H), no bias yet
    y, c_tail = ops.bias_dropout_add_layernorm_forward(o, P["output.dense.bias"], x, P["output.LayerNorm.weight"],
                                                       P["output.LayerNorm.bias"], cfg.hidden_dropout_prob, rng,
                                                       training, cfg.layer_norm_eps, row_offset, row_ids=row_ids)
    return y, (c_dense, c_tail)


def output_backward(dy, cache, G: Scope, ops):
    """dy: (B, T, H) -> (dh (B, T, in), dx (B, T, H): the residual's share); accumulates the parameter gradients."""
    c_dense, c_tail = cache
    do, dx, dbias, dgamma, dbeta = ops.bias_dropout_add_layernorm_backward(dy, c_tail)
    G.add("output.LayerNorm.weight", dgamma)
    G.add("output.LayerNorm.bias", dbeta)
    dh, dw, _ = linear_backward(do, c_dense, bias=False)
    G.add("output.dense.weight", dw)
    G.add("output.dense.bias", dbias)
    return dh, dx


# =======================================================================================
# Embeddings:  LayerNorm(W_word[ids] + W_type[tt] + W_pos[:T]), then dropout
# =======================================================================================
class EmbeddingsCache(NamedTuple):
    words: tuple            # the word lookup's cache (nn/layers.py: embedding_cache): (ids (B, T), table shape)
    types: tuple            # same, for the token types
    layernorm: tuple
    dropout: object
    seq_len: int            # T: rows of the position table in use


def embeddings_forward(ids, token_type_ids, P: Scope, ops, cfg: BertConfig, rng, training: bool, row_offset: int = 0):
    """ids, token_type_ids: (B, T) ints -> (B, T, H). ``row_offset``: see :func:`encoder_forward`."""
    T = ids.shape[1]
    word, types = P["word_embeddings.weight"], P["token_type_embeddings.weight"]
    x = ops.embedding_sum(ids, token_type_ids, word, types, P["position_embeddings.weight"])  # (B, T, H)
    c_words, c_types = embedding_cache(ids, word), embedding_cache(token_type_ids, types)   # for the backward
    y, c_ln = norm_forward(x, P / "LayerNorm", ops, cfg)
    y, c_drop = ops.dropout_forward(y, cfg.hidden_dropout_prob, rng, training, row_offset=row_offset)
    return y, EmbeddingsCache(c_words, c_types, c_ln, c_drop, T)


def embeddings_backward(dy, cache: EmbeddingsCache, P: Scope, G: Scope, ops) -> None:
    """dy: (B, T, H). The input ids have no gradient: this only accumulates into the three tables."""
    xp = get_array_module(dy)
    dy = ops.dropout_backward(dy, cache.dropout)
    dx = norm_backward(dy, cache.layernorm, G / "LayerNorm", ops)                          # (B, T, H)
    H = dx.shape[-1]
    # forward: x = W_word[ids] + W_type[tt] + W_pos[:T]; a lookup's backward is a scatter-add
    for name, (ids, shape) in (("word_embeddings.weight", cache.words), ("token_type_embeddings.weight", cache.types)):
        if name not in G:
            G.tensors[G.prefix + name] = xp.zeros(shape, dtype=dx.dtype)
        ops.scatter_add_rows(G[name], ids.reshape(-1), dx.reshape(-1, H))
    dpos = xp.zeros(P["position_embeddings.weight"].shape, dtype=dx.dtype)
    dpos[:cache.seq_len] = dx.sum(axis=0)                                                  # (T, H)
    G.add("position_embeddings.weight", dpos)


# =======================================================================================
# Attention block:  LayerNorm(x + dropout(dense(MultiHead(x))))
# =======================================================================================
QKV = ("query", "key", "value")


class AttentionBlockCache(NamedTuple):
    qkv: tuple              # linear cache of the fused Q/K/V projection (None at query rows)
    core: dict              # the attention core's cache (its layout belongs to the backend)
    output: tuple           # output_forward's cache: dense, then bias + dropout + residual + LayerNorm
    shape: tuple            # (B, T, H, nh, d)
    probs: Optional[tuple] = None   # (P, q, k) when the forward returned P: a loss on P backpropagates through it
    rows: Optional[object] = None   # (M,) the flat rows of (B*T) the block's output was computed at (None: all)
    query_rows: Optional[object] = None  # attention_rows.QueryRowsCache: the queries were at ``rows`` only

    @property
    def layernorm(self):
        """The output LayerNorm's own cache (for ``ops.layernorm_backward``, e.g. the skip path alone)."""
        return self.output[1][0]


def attention_block_forward(x, mask, P: Scope, ops, cfg: BertConfig, rng, training: bool,
                            output_attentions: bool = False, row_offset: int = 0, rows=None):
    """x: (B, T, H), mask: (B, T) or None -> (y (B, T, H), probs (B, nh, T, T) or None, cache).

    ``rows`` (M,), sorted flat indices into the B*T positions: the output only at those rows, y (M, H) (the
    last layer, when only the heads' rows are read: :func:`encoder_forward`). Keys and values still cover
    every position (each row attends to all); the queries, the attention core's rows, the output dense layer,
    its dropout, residual and LayerNorm run on the M rows alone (``attention_rows.py``). A backend whose
    attention kernel computes every query row (CUDA), or ``output_attentions`` (the whole (T, T) map), keeps
    the queries and the core at every row and gathers the M rows after it."""
    xp = get_array_module(x)
    B, T, H = x.shape
    nh, d = cfg.num_attention_heads, cfg.head_size
    att_p = cfg.attention_probs_dropout_prob if training else 0.0
    if rows is not None and ops.attention_at_query_rows and not output_attentions:
        seed = int(rng.integers(0, 2**32)) if att_p > 0 else 0                            # drawn as below
        ctx, x_rows, c_rows = attention_at_query_rows_forward(x, mask, P, ops, cfg, att_p, seed, row_offset, rows)
        y, c_out = output_forward(ctx, x_rows, P, ops, cfg, rng, training, row_offset, rows + row_offset * T)
        return y, None, AttentionBlockCache(None, None, c_out, (B, T, H, nh, d), None, rows, c_rows)
    # the three projections as one matmul: [Wq; Wk; Wv] is (3H, H)
    w_qkv = xp.concatenate([P[f"self.{n}.weight"] for n in QKV], axis=0)
    b_qkv = xp.concatenate([P[f"self.{n}.bias"] for n in QKV], axis=0)
    qkv, c_qkv = linear_forward(x, w_qkv, None)                                           # (B, T, 3H), no bias yet
    q, k, v = ops.split_heads_forward(qkv, b_qkv, 3, nh)                                  # 3 x (B, nh, T, d), + bias
    seed = int(rng.integers(0, 2**32)) if att_p > 0 else 0
    ctx, c_core = ops.attention_forward(q, k, v, mask, att_p, seed, row_offset=row_offset)  # (B, nh, T, d)
    probs = kept = None
    if output_attentions:
        probs = c_core["probs"] if "probs" in c_core else attention_probabilities(q, k, mask)
        kept = (probs, q, k)
    ctx = ctx.transpose(0, 2, 1, 3).reshape(B, T, H)                # merge heads (no copy from the Numba kernel)
    row_ids = None
    if rows is not None:
        ctx, x = ctx.reshape(B * T, H)[rows], x.reshape(B * T, H)[rows]                  # (M, H) each
        row_ids = rows + row_offset * T                                                   # global rows: dropout keys
    y, c_out = output_forward(ctx, x, P, ops, cfg, rng, training, row_offset, row_ids)   # LN(x + dropout(dense))
    return y, probs, AttentionBlockCache(c_qkv, c_core, c_out, (B, T, H, nh, d), kept, rows)


def attention_block_backward(dy, cache: AttentionBlockCache, P: Scope, G: Scope, ops, dprobs=None):
    """dy: (B, T, H) (or (M, H) at the forward's ``rows``) -> dx (B, T, H). ``dprobs`` (B, nh, T, T): a gradient
    on the returned attention probabilities too (a loss on them, as in distillation); it reaches q and k
    through the softmax."""
    if dprobs is not None and cache.probs is None:             # checked before any gradient is accumulated
        raise RuntimeError("a gradient on the attention probabilities needs a forward with output_attentions")
    xp = get_array_module(dy)
    B, T, H, nh, d = cache.shape
    # forward: y = LayerNorm(x + dropout(dense(ctx)))
    dctx, dx = output_backward(dy, cache.output, G, ops)        # dx: the residual branch's share
    if cache.query_rows is not None:                            # (never with probs: see the forward)
        return attention_at_query_rows_backward(dctx, dx, cache.query_rows, G, ops)
    if cache.rows is not None:                                  # forward: ctx, x = ctx[rows], x[rows]
        dctx_rows, dx_rows = dctx, dx
        dctx, dx = xp.zeros((B * T, H), dtype=dy.dtype), xp.zeros((B * T, H), dtype=dy.dtype)
        dctx[cache.rows] = dctx_rows                            # the rows are distinct: no repeats to add
        dx[cache.rows] = dx_rows
        dctx, dx = dctx.reshape(B, T, H), dx.reshape(B, T, H)
    # forward: ctx = merge_heads(attention(q, k, v)); the split is a view (each backend copies what it needs:
    # the Numba kernel reads the merged rows as they are)
    dctx = dctx.reshape(B, T, nh, d).transpose(0, 2, 1, 3)                                 # (B, nh, T, d)
    dq, dk, dv = ops.attention_backward(dctx, cache.core)
    if dprobs is not None:
        dq_p, dk_p = attention_probabilities_backward(dprobs, *cache.probs)
        dq, dk = dq + dq_p, dk + dk_p
    dqkv, db_qkv = ops.split_heads_backward((dq, dk, dv))                                   # (B, T, 3H), (3H,)
    dx_in, dw_qkv, _ = linear_backward(dqkv, cache.qkv, bias=False)
    for j, n in enumerate(QKV):
        G.add(f"self.{n}.weight", dw_qkv[j * H:(j + 1) * H])
        G.add(f"self.{n}.bias", db_qkv[j * H:(j + 1) * H])
    dx_in += dx                                                 # a fresh array: summed in place
    return dx_in


# =======================================================================================
# Feed-forward block:  LayerNorm(x + dropout(W2 gelu(W1 x)))
# =======================================================================================
class FFNBlockCache(NamedTuple):
    intermediate: tuple     # linear cache of W1 (H -> I), its bias added by the fused GELU
    gelu: tuple             # bias + GELU
    output: tuple           # output_forward's cache: W2 (I -> H), then bias + dropout + residual + LayerNorm

    @property
    def layernorm(self):
        """The output LayerNorm's own cache (for ``ops.layernorm_backward``, e.g. the skip path alone)."""
        return self.output[1][0]


def ffn_block_forward(x, P: Scope, ops, cfg: BertConfig, rng, training: bool, row_offset: int = 0, row_ids=None):
    """x: (B, T, H) -> (y (B, T, H), cache), or x: (M, H) gathered rows with ``row_ids`` (M,) their global rows
    (see :func:`output_forward`). ``P`` is the layer's scope (``intermediate.*``, ``output.*``)."""
    h, c_in = linear_forward(x, P["intermediate.dense.weight"], None)                    # (B, T, I), no bias yet
    g, c_gelu = ops.bias_gelu_forward(h, P["intermediate.dense.bias"])                    # gelu(h + b1), fused
    y, c_out = output_forward(g, x, P, ops, cfg, rng, training, row_offset, row_ids)     # LN(x + dropout(dense(g)))
    return y, FFNBlockCache(c_in, c_gelu, c_out)


def ffn_block_backward(dy, cache: FFNBlockCache, P: Scope, G: Scope, ops):
    """dy: (B, T, H) -> dx (B, T, H)."""
    dg, dsum = output_backward(dy, cache.output, G, ops)         # dsum: the residual branch's share
    dh, db = ops.bias_gelu_backward(dg, cache.gelu)
    dx, dw, _ = linear_backward(dh, cache.intermediate, bias=False)
    G.add("intermediate.dense.weight", dw)
    G.add("intermediate.dense.bias", db)
    dx += dsum                                          # through the block + residual
    return dx


# =======================================================================================
# Pooler:  tanh(dense(h_[CLS]))
# =======================================================================================
class PoolerCache(NamedTuple):
    dense: tuple
    tanh: object
    seq_shape: tuple        # (B, T, H) of the sequence it read row 0 of (or (M, H): gathered rows)
    cls_rows: Optional[object] = None   # (B,) the [CLS] rows' indices among gathered rows; None: seq[:, 0]


def pooler_forward(seq, P: Scope, cls_rows=None):
    """seq: (B, T, H) -> pooled (B, H); or seq: (M, H) gathered rows, the [CLS] rows at ``cls_rows`` (B,)."""
    first = seq[:, 0] if cls_rows is None else seq[cls_rows]                              # (B, H)
    h, c_dense = dense_forward(first, P / "dense")                                        # (B, H)
    y, c_tanh = tanh_forward(h)
    return y, PoolerCache(c_dense, c_tanh, seq.shape, cls_rows)


def pooler_backward(dy, cache: PoolerCache, G: Scope):
    """dy: (B, H) -> dseq (B, T, H) (or (M, H)), non-zero at the [CLS] rows only."""
    dh = tanh_backward(dy, cache.tanh)
    dfirst = dense_backward(dh, cache.dense, G / "dense")
    dseq = get_array_module(dy).zeros(cache.seq_shape, dtype=dy.dtype)
    if cache.cls_rows is None:
        dseq[:, 0] = dfirst
    else:
        dseq[cache.cls_rows] = dfirst
    return dseq


# =======================================================================================
# The encoder: embeddings, L x (attention block, FFN block), pooler
# =======================================================================================
class LayerCache(NamedTuple):
    attention: AttentionBlockCache
    ffn: FFNBlockCache


class EncoderCache(NamedTuple):
    embeddings: EmbeddingsCache
    layers: list            # L x LayerCache
    pooler: PoolerCache
    seq_shape: tuple        # (B, T, H), or (M, H) at the rows asked for


class EncoderOutput(NamedTuple):
    sequence: object                    # (B, T, H), or (M, H) at the ``rows`` asked for
    pooled: object                      # (B, H)
    hidden_states: Optional[tuple]      # (L + 1) x (B, T, H): embeddings, then each layer
    attentions: Optional[tuple]         # L x (B, nh, T, T)
    cache: EncoderCache


def encoder_forward(ids, token_type_ids, mask, P: Scope, ops, cfg: BertConfig, rng, training: bool,
                    output_hidden_states: bool = False, output_attentions: bool = False,
                    row_offset: int = 0, rows=None) -> EncoderOutput:
    """``P`` is the encoder's scope (``bert.`` for the task models, empty for ``BertModel``).

    ``row_offset``: the global row of ``ids[0]`` when this is a data-parallel rank's shard of a larger batch;
    every dropout mask is keyed by (seed, global position), so N shards drop what one process would.

    ``rows`` (M,): sorted, distinct flat indices into the B*T positions, every [CLS] row ``b * T`` among them
    when there is a pooler. Only those rows of the last layer's output are computed (its attention still reads
    every position), and ``sequence`` is (M, H): what pretraining does, where the heads read the [CLS] and the
    masked rows alone (~17% of the positions), so the last layer's output dense, FFN and LayerNorms run on
    those. The same numbers as the full computation at those rows, dropout masks included."""
    x, c_emb = embeddings_forward(ids, token_type_ids, P / "embeddings", ops, cfg, rng, training, row_offset)
    hidden_states = [x] if output_hidden_states else None
    attentions = [] if output_attentions else None
    layer_caches = []
    last = cfg.num_hidden_layers - 1
    if rows is not None and output_hidden_states:
        raise ValueError("rows and output_hidden_states exclude each other: the last hidden state is only "
                         "computed at the rows")
    B, T = ids.shape
    for i in range(cfg.num_hidden_layers):
        layer = P / f"encoder.layer.{i}"
        at_rows = rows if i == last else None
        x, probs, c_att = attention_block_forward(x, mask, layer / "attention", ops, cfg, rng, training,
                                                  output_attentions, row_offset, at_rows)
        row_ids = None if at_rows is None else at_rows + row_offset * T
        x, c_ffn = ffn_block_forward(x, layer, ops, cfg, rng, training, row_offset, row_ids)
        layer_caches.append(LayerCache(c_att, c_ffn))
        if output_hidden_states:
            hidden_states.append(x)
        if output_attentions:
            attentions.append(probs)
    # a token-classification / QA / masked-LM encoder has no pooler (Hugging Face's add_pooling_layer=False)
    cls_rows = None
    if rows is not None and "pooler.dense.weight" in P:
        xp = get_array_module(x)
        cls_rows = xp.searchsorted(rows, xp.arange(B) * T)                                  # (B,)
        if not bool((rows[xp.minimum(cls_rows, len(rows) - 1)] == xp.arange(B) * T).all()):
            raise ValueError("rows must hold every [CLS] row b * T: the pooler reads them")
    pooled, c_pool = pooler_forward(x, P / "pooler", cls_rows) if "pooler.dense.weight" in P else (None, None)
    return EncoderOutput(x, pooled, None if hidden_states is None else tuple(hidden_states),
                         None if attentions is None else tuple(attentions),
                         EncoderCache(c_emb, layer_caches, c_pool, x.shape))


def encoder_backward(dseq, dpooled, cache: EncoderCache, P: Scope, G: Scope, ops, on_layer_done=None,
                     d_hidden_states=None, d_attentions=None) -> None:
    """dseq: (B, T, H), dpooled: (B, H) or None; accumulates every encoder gradient into ``G``.

    ``d_hidden_states``: (L + 1) gradients (or Nones) on the forward's ``hidden_states`` (embeddings first);
    ``d_attentions``: L gradients (or Nones) on its ``attentions``: the backward of a loss on the inner
    layers (distillation), which needs a forward with ``output_attentions`` for the latter.

    ``on_layer_done(grads)``, if given, is called after each layer's backward with the gradient dict so far:
    a data-parallel run starts reducing the gradients that are final while the backward goes on."""
    dx = dseq
    if dpooled is not None:
        dx = dx + pooler_backward(dpooled, cache.pooler, G / "pooler")
    dh = d_hidden_states or (None,) * (len(cache.layers) + 1)
    for i in reversed(range(len(cache.layers))):
        layer_P, layer_G = P / f"encoder.layer.{i}", G / f"encoder.layer.{i}"
        if dh[i + 1] is not None:
            dx = dx + dh[i + 1]                        # layer i's output is hidden_states[i + 1]
        dx = ffn_block_backward(dx, cache.layers[i].ffn, layer_P, layer_G, ops)
        dx = attention_block_backward(dx, cache.layers[i].attention, layer_P / "attention", layer_G / "attention",
                                      ops, None if d_attentions is None else d_attentions[i])
        if on_layer_done is not None:
            on_layer_done(G.tensors)
    if dh[0] is not None:
        dx = dx + dh[0]
    embeddings_backward(dx, cache.embeddings, P / "embeddings", G / "embeddings", ops)
