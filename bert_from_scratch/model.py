r"""BERT with every forward and backward pass written by hand.

The parameters live in one flat dict, ``model.params``, keyed by Hugging Face's state-dict
names (``bert.encoder.layer.0.attention.self.query.weight``, ...), so loading and saving a
checkpoint is a rename-free copy. Gradients come back in a dict with the same keys.

Data flow (B = batch, T = tokens, H = hidden size, nh = heads, d = H / nh, V = vocab)::

    input_ids (B, T) ─ embeddings ─> (B, T, H) ─ L x encoder layer ─> sequence_output (B, T, H)
        sequence_output[:, 0] ─ pooler (dense + tanh) ─> pooled (B, H) ─ NSP head ─> (B, 2)
        sequence_output[labelled] ─ MLM head (dense, GELU, LayerNorm, tied decoder) ─> (N, V)

Each block's backward sits right under its forward. Backward functions *accumulate* into the
gradient dict ``grads`` (``+=``, as llm.c does), so the word embedding, used both at the input
and as the MLM decoder, gets the sum of both uses without any special case.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .attention import attention_backward, attention_forward, attention_probabilities
from .config import BertConfig
from .layers import (IGNORE_INDEX, cross_entropy_backward, cross_entropy_forward, dropout_backward,
                     dropout_forward, embedding_forward, gelu_backward, gelu_forward, layernorm_backward,
                     layernorm_forward, linear_backward, linear_forward, scatter_add_rows, tanh_backward,
                     tanh_forward)
from .xp import get_array_module, to_numpy


def accumulate(grads: dict, name: str, value):
    """grads[name] += value (creating it on first use)."""
    if name in grads:
        grads[name] += value
    else:
        grads[name] = value


# =======================================================================================
# Parameters: names and initialisation
# =======================================================================================
def encoder_param_shapes(cfg: BertConfig, prefix: str = "bert.") -> dict:
    """Shapes of the encoder + pooler parameters, Hugging Face names, Linear weights [out, in]."""
    H, I = cfg.hidden_size, cfg.intermediate_size
    e = prefix + "embeddings."
    shapes = {
        e + "word_embeddings.weight": (cfg.vocab_size, H),
        e + "position_embeddings.weight": (cfg.max_position_embeddings, H),
        e + "token_type_embeddings.weight": (cfg.type_vocab_size, H),
        e + "LayerNorm.weight": (H,), e + "LayerNorm.bias": (H,),
    }
    for i in range(cfg.num_hidden_layers):
        p = f"{prefix}encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes[p + f"attention.self.{name}.weight"] = (H, H)
            shapes[p + f"attention.self.{name}.bias"] = (H,)
        shapes[p + "attention.output.dense.weight"] = (H, H)
        shapes[p + "attention.output.dense.bias"] = (H,)
        shapes[p + "attention.output.LayerNorm.weight"] = (H,)
        shapes[p + "attention.output.LayerNorm.bias"] = (H,)
        shapes[p + "intermediate.dense.weight"] = (I, H)
        shapes[p + "intermediate.dense.bias"] = (I,)
        shapes[p + "output.dense.weight"] = (H, I)
        shapes[p + "output.dense.bias"] = (H,)
        shapes[p + "output.LayerNorm.weight"] = (H,)
        shapes[p + "output.LayerNorm.bias"] = (H,)
    shapes[prefix + "pooler.dense.weight"] = (H, H)
    shapes[prefix + "pooler.dense.bias"] = (H,)
    return shapes


def init_params(shapes: dict, cfg: BertConfig, rng: np.random.Generator, dtype) -> dict:
    """BERT's init: weights ~ N(0, initializer_range), biases 0, LayerNorm weight 1 / bias 0."""
    params = {}
    for name, shape in shapes.items():
        if "LayerNorm" in name:
            value = np.ones(shape) if name.endswith("weight") else np.zeros(shape)
        elif name.endswith("bias"):
            value = np.zeros(shape)
        else:
            value = rng.normal(0.0, cfg.initializer_range, size=shape)
        params[name] = value.astype(dtype)
    return params


# =======================================================================================
# Outputs
# =======================================================================================
@dataclass
class BertModelOutput:
    last_hidden_state: object                 # (B, T, H)
    pooler_output: object                     # (B, H)
    hidden_states: Optional[tuple] = None     # (L + 1) x (B, T, H): embeddings, then each layer
    attentions: Optional[tuple] = None        # L x (B, nh, T, T)


@dataclass
class PreTrainingOutput:
    loss: Optional[float]                     # MLM mean + NSP mean, as Hugging Face
    mlm_loss: Optional[float]
    nsp_loss: Optional[float]
    prediction_logits: object                 # (B, T, V) without labels, (N, V) at labelled positions with
    seq_relationship_logits: object           # (B, 2)
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    masked_positions: Optional[tuple] = None  # (batch index, token index) arrays of the N labelled positions


@dataclass
class SequenceClassifierOutput:
    loss: Optional[float]
    logits: object                            # (B, num_labels)
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


# =======================================================================================
# Input checks: clear errors before anything deep in NumPy fails
# =======================================================================================
def _as_int_array(name, a, xp, ndim):
    if a is None:
        return None
    if not hasattr(a, "dtype"):
        a = np.asarray(a)
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "b":
            a = a.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integers; got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s); got shape {tuple(a.shape)}")
    return xp.asarray(a)


def check_inputs(cfg: BertConfig, xp, input_ids, token_type_ids, attention_mask):
    ids = _as_int_array("input_ids", input_ids, xp, 2)
    if ids is None:
        raise ValueError("input_ids is required")
    B, T = ids.shape
    if T == 0 or B == 0:
        raise ValueError(f"input_ids is empty: shape {tuple(ids.shape)}")
    if T > cfg.max_position_embeddings:
        raise ValueError(f"sequence too long: {T} tokens but max_position_embeddings is "
                         f"{cfg.max_position_embeddings}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= cfg.vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id out of range: {bad} (vocab_size is {cfg.vocab_size})")
    if token_type_ids is None:
        tt = xp.zeros_like(ids)
    else:
        tt = _as_int_array("token_type_ids", token_type_ids, xp, 2)
        if tt.shape != ids.shape:
            raise ValueError(f"token_type_ids has shape {tuple(tt.shape)}; input_ids has {tuple(ids.shape)}")
        if int(tt.min()) < 0 or int(tt.max()) >= cfg.type_vocab_size:
            raise ValueError(f"token_type_ids must be in [0, {cfg.type_vocab_size}); got values in "
                             f"[{int(tt.min())}, {int(tt.max())}]")
    if attention_mask is None:
        mask = None
    else:
        mask = _as_int_array("attention_mask", attention_mask, xp, 2) if not (
            hasattr(attention_mask, "dtype") and attention_mask.dtype.kind == "f") else xp.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; expected {tuple(ids.shape)} "
                             f"like input_ids")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (keep)")
    return ids, tt, mask


# =======================================================================================
# The encoder: embeddings, L layers, pooler — forward and backward side by side
# =======================================================================================
class _Encoder:
    """Encoder + pooler over ``self.params`` with names under ``self.base_prefix``."""

    base_prefix = "bert."

    def _setup(self, config: BertConfig, seed: int, dtype):
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a BertConfig; got {type(config).__name__}")
        self.config = config
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64; got {self.dtype}")
        self.rng = np.random.default_rng(seed)   # dropout masks and attention-dropout seeds
        self.init_rng = np.random.default_rng(seed)
        self._cache = None

    @property
    def xp(self):
        return get_array_module(next(iter(self.params.values())))

    # ---- embeddings -------------------------------------------------------------------
    def _embeddings_forward(self, ids, tt, training):
        P, pre, cfg = self.params, self.base_prefix + "embeddings.", self.config
        T = ids.shape[1]
        words, c_words = embedding_forward(ids, P[pre + "word_embeddings.weight"])         # (B, T, H)
        types, c_types = embedding_forward(tt, P[pre + "token_type_embeddings.weight"])    # (B, T, H)
        x = words + types
        x += P[pre + "position_embeddings.weight"][:T]                                     # (T, H) broadcast
        y, c_ln = layernorm_forward(x, P[pre + "LayerNorm.weight"], P[pre + "LayerNorm.bias"],
                                    cfg.layer_norm_eps)
        y, c_drop = dropout_forward(y, cfg.hidden_dropout_prob, self.rng, training)
        return y, (c_words, c_types, c_ln, c_drop, T)

    def _embeddings_backward(self, dy, cache, grads):
        pre = self.base_prefix + "embeddings."
        c_words, c_types, c_ln, c_drop, T = cache
        xp = get_array_module(dy)
        dy = dropout_backward(dy, c_drop)
        dx, dgamma, dbeta = layernorm_backward(dy, c_ln)                                   # (B, T, H)
        accumulate(grads, pre + "LayerNorm.weight", dgamma)
        accumulate(grads, pre + "LayerNorm.bias", dbeta)
        H = dx.shape[-1]
        # forward: x = W_word[ids] + W_type[tt] + W_pos[:T]; a lookup's backward is a scatter-add
        for name, (ids, shape) in (("word_embeddings.weight", c_words), ("token_type_embeddings.weight", c_types)):
            if pre + name not in grads:
                grads[pre + name] = xp.zeros(shape, dtype=dx.dtype)
            scatter_add_rows(grads[pre + name], ids.reshape(-1), dx.reshape(-1, H))
        dpos = xp.zeros(self.params[pre + "position_embeddings.weight"].shape, dtype=dx.dtype)
        dpos[:T] = dx.sum(axis=0)                                                           # (T, H)
        accumulate(grads, pre + "position_embeddings.weight", dpos)

    # ---- self-attention block ---------------------------------------------------------
    def _attention_forward(self, i, x, mask, training, output_attentions):
        """x: (B, T, H) -> LayerNorm(x + dropout(dense(MultiHead(x))))."""
        P, cfg = self.params, self.config
        p = f"{self.base_prefix}encoder.layer.{i}.attention."
        xp = get_array_module(x)
        B, T, H = x.shape
        nh, d = cfg.num_attention_heads, cfg.head_size
        # the three projections as one matmul: [Wq; Wk; Wv] is (3H, H)
        w_qkv = xp.concatenate([P[p + f"self.{n}.weight"] for n in ("query", "key", "value")], axis=0)
        b_qkv = xp.concatenate([P[p + f"self.{n}.bias"] for n in ("query", "key", "value")], axis=0)
        qkv, c_qkv = linear_forward(x, w_qkv, b_qkv)                                        # (B, T, 3H)
        # (B, T, 3, nh, d) -> 3 x (B, nh, T, d)
        qkv = qkv.reshape(B, T, 3, nh, d).transpose(2, 0, 3, 1, 4)
        q, k, v = (xp.ascontiguousarray(qkv[j]) for j in range(3))
        att_p = cfg.attention_probs_dropout_prob if training else 0.0
        seed = int(self.rng.integers(0, 2**32)) if att_p > 0 else 0
        ctx, c_att = attention_forward(q, k, v, mask, att_p, seed, backend=cfg.attention_backend)   # (B, nh, T, d)
        probs = None
        if output_attentions:
            probs = c_att["probs"] if "probs" in c_att else attention_probabilities(q, k, mask)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(B, T, H)                                    # merge heads
        out, c_out = linear_forward(ctx, P[p + "output.dense.weight"], P[p + "output.dense.bias"])
        out, c_drop = dropout_forward(out, cfg.hidden_dropout_prob, self.rng, training)
        out += x                                                                            # residual
        y, c_ln = layernorm_forward(out, P[p + "output.LayerNorm.weight"], P[p + "output.LayerNorm.bias"],
                                    cfg.layer_norm_eps)
        return y, probs, (c_qkv, c_att, c_out, c_drop, c_ln, (B, T, H, nh, d))

    def _attention_backward(self, i, dy, cache, grads):
        p = f"{self.base_prefix}encoder.layer.{i}.attention."
        c_qkv, c_att, c_out, c_drop, c_ln, (B, T, H, nh, d) = cache
        xp = get_array_module(dy)
        # forward: y = LayerNorm(x + dropout(dense(ctx)))
        dsum, dgamma, dbeta = layernorm_backward(dy, c_ln)
        accumulate(grads, p + "output.LayerNorm.weight", dgamma)
        accumulate(grads, p + "output.LayerNorm.bias", dbeta)
        dx = dsum                                          # the residual branch's share of dx
        dout = dropout_backward(dsum, c_drop)
        dctx, dw, db = linear_backward(dout, c_out)
        accumulate(grads, p + "output.dense.weight", dw)
        accumulate(grads, p + "output.dense.bias", db)
        # forward: ctx = merge_heads(attention(q, k, v))
        dctx = xp.ascontiguousarray(dctx.reshape(B, T, nh, d).transpose(0, 2, 1, 3))         # (B, nh, T, d)
        dq, dk, dv = attention_backward(dctx, c_att)
        dqkv = xp.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, 3 * H)          # (B, T, 3H)
        dx_in, dw_qkv, db_qkv = linear_backward(dqkv, c_qkv)
        for j, n in enumerate(("query", "key", "value")):
            accumulate(grads, p + f"self.{n}.weight", dw_qkv[j * H:(j + 1) * H])
            accumulate(grads, p + f"self.{n}.bias", db_qkv[j * H:(j + 1) * H])
        return dx + dx_in

    # ---- feed-forward block -----------------------------------------------------------
    def _ffn_forward(self, i, x, training):
        """x: (B, T, H) -> LayerNorm(x + dropout(W2 gelu(W1 x)))."""
        P, cfg = self.params, self.config
        p = f"{self.base_prefix}encoder.layer.{i}."
        h, c_in = linear_forward(x, P[p + "intermediate.dense.weight"], P[p + "intermediate.dense.bias"])  # (B,T,I)
        g, c_gelu = gelu_forward(h)
        out, c_out = linear_forward(g, P[p + "output.dense.weight"], P[p + "output.dense.bias"])           # (B,T,H)
        out, c_drop = dropout_forward(out, cfg.hidden_dropout_prob, self.rng, training)
        out += x                                                                            # residual
        y, c_ln = layernorm_forward(out, P[p + "output.LayerNorm.weight"], P[p + "output.LayerNorm.bias"],
                                    cfg.layer_norm_eps)
        return y, (c_in, c_gelu, c_out, c_drop, c_ln)

    def _ffn_backward(self, i, dy, cache, grads):
        p = f"{self.base_prefix}encoder.layer.{i}."
        c_in, c_gelu, c_out, c_drop, c_ln = cache
        dsum, dgamma, dbeta = layernorm_backward(dy, c_ln)
        accumulate(grads, p + "output.LayerNorm.weight", dgamma)
        accumulate(grads, p + "output.LayerNorm.bias", dbeta)
        dout = dropout_backward(dsum, c_drop)
        dg, dw, db = linear_backward(dout, c_out)
        accumulate(grads, p + "output.dense.weight", dw)
        accumulate(grads, p + "output.dense.bias", db)
        dh = gelu_backward(dg, c_gelu)
        dx, dw, db = linear_backward(dh, c_in)
        accumulate(grads, p + "intermediate.dense.weight", dw)
        accumulate(grads, p + "intermediate.dense.bias", db)
        return dsum + dx                                    # residual + through the block

    # ---- pooler: dense + tanh on [CLS] --------------------------------------------------
    def _pooler_forward(self, seq):
        P, p = self.params, self.base_prefix + "pooler.dense."
        h, c_dense = linear_forward(seq[:, 0], P[p + "weight"], P[p + "bias"])              # (B, H)
        y, c_tanh = tanh_forward(h)
        return y, (c_dense, c_tanh, seq.shape)

    def _pooler_backward(self, dy, cache, grads):
        p = self.base_prefix + "pooler.dense."
        c_dense, c_tanh, seq_shape = cache
        dh = tanh_backward(dy, c_tanh)
        dfirst, dw, db = linear_backward(dh, c_dense)
        accumulate(grads, p + "weight", dw)
        accumulate(grads, p + "bias", db)
        xp = get_array_module(dy)
        dseq = xp.zeros(seq_shape, dtype=dy.dtype)
        dseq[:, 0] = dfirst
        return dseq

    # ---- the whole encoder ----------------------------------------------------------------
    def _encode(self, input_ids, token_type_ids, attention_mask, training, output_hidden_states,
                output_attentions):
        xp = self.xp
        ids, tt, mask = check_inputs(self.config, xp, input_ids, token_type_ids, attention_mask)
        x, c_emb = self._embeddings_forward(ids, tt, training)
        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        layer_caches = []
        for i in range(self.config.num_hidden_layers):
            x, probs, c_att = self._attention_forward(i, x, mask, training, output_attentions)
            x, c_ffn = self._ffn_forward(i, x, training)
            layer_caches.append((c_att, c_ffn))
            if output_hidden_states:
                hidden_states.append(x)
            if output_attentions:
                attentions.append(probs)
        pooled, c_pool = self._pooler_forward(x)
        enc_cache = (c_emb, layer_caches, c_pool, x.shape)
        return (x, pooled, tuple(hidden_states) if hidden_states is not None else None,
                tuple(attentions) if attentions is not None else None, ids, enc_cache)

    def _encode_backward(self, dseq, dpooled, enc_cache, grads):
        c_emb, layer_caches, c_pool, seq_shape = enc_cache
        xp = self.xp
        dx = xp.zeros(seq_shape, dtype=self.dtype) if dseq is None else dseq
        if dpooled is not None:
            dx = dx + self._pooler_backward(dpooled, c_pool, grads)
        for i in reversed(range(self.config.num_hidden_layers)):
            c_att, c_ffn = layer_caches[i]
            dx = self._ffn_backward(i, dx, c_ffn, grads)
            dx = self._attention_backward(i, dx, c_att, grads)
        self._embeddings_backward(dx, c_emb, grads)

    def encode(self, input_ids, token_type_ids=None, attention_mask=None, training=False,
               output_hidden_states=False, output_attentions=False) -> BertModelOutput:
        """Run the encoder and pooler only (no task head): for embeddings, probing and plots.
        Keeps no backward cache (a following ``backward()`` belongs to the last ``forward()``)."""
        seq, pooled, hs, att, _, _ = self._encode(input_ids, token_type_ids, attention_mask, training,
                                                  output_hidden_states, output_attentions)
        return BertModelOutput(seq, pooled, hs, att)

    def attention_grads(self):
        """dL/dP for every layer's attention probabilities, (B, nh, T, T) each, from the last backward.

        Needs ``config.attention_backend = "numpy"`` (the fused kernels never form P)."""
        if self._cache is None:
            raise RuntimeError("call forward and backward first")
        out = []
        for c_att, _ in self._cache["encoder"][1]:
            att = c_att[1]
            if "grad_probs" not in att:
                raise RuntimeError("attention gradients are only kept by the 'numpy' attention backend, after "
                                   "backward(); set model.config.attention_backend = 'numpy'")
            out.append(att["grad_probs"])
        return out

    # ---- utilities ------------------------------------------------------------------------
    def to(self, device: str):
        """Move the parameters to "cupy" (GPU) or "numpy" (host), in place; returns self."""
        if device in ("cupy", "cuda", "gpu"):
            import cupy  # type: ignore

            self.params = {k: cupy.asarray(v) for k, v in self.params.items()}
        elif device in ("numpy", "cpu"):
            self.params = {k: to_numpy(v) for k, v in self.params.items()}
        else:
            raise ValueError(f"unknown device {device!r}; use 'numpy' or 'cupy'")
        self._cache = None
        return self

    def num_parameters(self) -> int:
        return int(sum(v.size for v in self.params.values()))

    def _backward_setup(self):
        if self._cache is None:
            raise RuntimeError("backward() needs a forward() first")
        return self._cache

    def save_pretrained(self, folder):
        from .checkpoint import save_pretrained

        save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, folder, dtype=np.float32, **kwargs):
        from .checkpoint import from_pretrained

        return from_pretrained(cls, folder, dtype=dtype, **kwargs)


# =======================================================================================
# BertModel: encoder + pooler, Hugging Face's BertModel names (no "bert." prefix)
# =======================================================================================
class BertModel(_Encoder):
    base_prefix = ""

    def __init__(self, config: BertConfig, seed: int = 0, dtype=np.float32):
        self._setup(config, seed, dtype)
        self.params = init_params(encoder_param_shapes(config, ""), config, self.init_rng, self.dtype)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, training=False,
                output_hidden_states=False, output_attentions=False) -> BertModelOutput:
        seq, pooled, hs, att, _, enc_cache = self._encode(input_ids, token_type_ids, attention_mask, training,
                                                          output_hidden_states, output_attentions)
        self._cache = {"encoder": enc_cache}
        return BertModelOutput(seq, pooled, hs, att)

    def backward(self, d_last_hidden_state=None, d_pooler_output=None) -> dict:
        """Gradients of ``sum(d_last_hidden_state * last_hidden_state) + sum(d_pooler_output * pooled)``."""
        cache = self._backward_setup()
        grads = {}
        self._encode_backward(d_last_hidden_state, d_pooler_output, cache["encoder"], grads)
        return grads


# =======================================================================================
# BertForPreTraining: encoder + masked-LM head + next-sentence head
# =======================================================================================
def _check_labels(cfg, xp, labels, next_sentence_label, B, T):
    if labels is not None:
        labels = _as_int_array("labels", labels, xp, 2)
        if labels.shape != (B, T):
            raise ValueError(f"labels has shape {tuple(labels.shape)}; expected {(B, T)} like input_ids")
        ok = (labels == IGNORE_INDEX) | ((labels >= 0) & (labels < cfg.vocab_size))
        if not bool(ok.all()):
            raise ValueError(f"labels must be -100 (ignore) or a token id in [0, {cfg.vocab_size})")
    if next_sentence_label is not None:
        next_sentence_label = _as_int_array("next_sentence_label", next_sentence_label, xp, 1)
        if next_sentence_label.shape != (B,):
            raise ValueError(f"next_sentence_label has shape {tuple(next_sentence_label.shape)}; expected ({B},)")
        if not bool(((next_sentence_label == 0) | (next_sentence_label == 1)).all()):
            raise ValueError("next_sentence_label must be 0 (is next) or 1 (random)")
    return labels, next_sentence_label


class BertForPreTraining(_Encoder):
    """BERT with the masked-LM and next-sentence-prediction heads (Hugging Face's ``BertForPreTraining``)."""

    def __init__(self, config: BertConfig, seed: int = 0, dtype=np.float32):
        self._setup(config, seed, dtype)
        H, V = config.hidden_size, config.vocab_size
        shapes = encoder_param_shapes(config, "bert.")
        shapes.update({
            "cls.predictions.bias": (V,),                          # the decoder's own bias
            "cls.predictions.transform.dense.weight": (H, H),
            "cls.predictions.transform.dense.bias": (H,),
            "cls.predictions.transform.LayerNorm.weight": (H,),
            "cls.predictions.transform.LayerNorm.bias": (H,),
            "cls.seq_relationship.weight": (2, H),
            "cls.seq_relationship.bias": (2,),
        })
        # the decoder weight is bert.embeddings.word_embeddings.weight itself (tied): no entry of its own
        self.params = init_params(shapes, config, self.init_rng, self.dtype)

    # ---- MLM head: dense -> GELU -> LayerNorm -> tied decoder + bias --------------------
    def _mlm_forward(self, rows):
        """rows: (N..., H) hidden states at the predicted positions -> logits (N..., V)."""
        P, p = self.params, "cls.predictions."
        h, c_dense = linear_forward(rows, P[p + "transform.dense.weight"], P[p + "transform.dense.bias"])
        g, c_gelu = gelu_forward(h)
        t, c_ln = layernorm_forward(g, P[p + "transform.LayerNorm.weight"], P[p + "transform.LayerNorm.bias"],
                                    self.config.layer_norm_eps)
        decoder = P["bert.embeddings.word_embeddings.weight"]                               # (V, H), tied
        logits, c_dec = linear_forward(t, decoder, P[p + "bias"])                           # (N..., V)
        return logits, (c_dense, c_gelu, c_ln, c_dec)

    def _mlm_backward(self, dlogits, cache, grads):
        p = "cls.predictions."
        c_dense, c_gelu, c_ln, c_dec = cache
        dt, dw_dec, db = linear_backward(dlogits, c_dec)
        accumulate(grads, "bert.embeddings.word_embeddings.weight", dw_dec)   # tied: summed with the input use
        accumulate(grads, p + "bias", db)
        dg, dgamma, dbeta = layernorm_backward(dt, c_ln)
        accumulate(grads, p + "transform.LayerNorm.weight", dgamma)
        accumulate(grads, p + "transform.LayerNorm.bias", dbeta)
        dh = gelu_backward(dg, c_gelu)
        drows, dw, db = linear_backward(dh, c_dense)
        accumulate(grads, p + "transform.dense.weight", dw)
        accumulate(grads, p + "transform.dense.bias", db)
        return drows

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                next_sentence_label=None, training=False, output_hidden_states=False,
                output_attentions=False) -> PreTrainingOutput:
        """Forward pass; keeps what ``backward()`` needs. See ``PreTrainingOutput`` for the fields.

        With ``labels`` (B, T) (-100 = not predicted) the MLM head runs only at the labelled
        positions, as google-research/bert does: ``prediction_logits`` is then (N, V), rows in
        the row-major order of the labelled positions. Without labels it covers every position.
        """
        seq, pooled, hs, att, ids, enc_cache = self._encode(input_ids, token_type_ids, attention_mask, training,
                                                            output_hidden_states, output_attentions)
        xp = get_array_module(seq)
        B, T, _ = seq.shape
        labels, nsl = _check_labels(self.config, xp, labels, next_sentence_label, B, T)
        if labels is not None:
            positions = xp.nonzero(labels != IGNORE_INDEX)                                  # 2 x (N,)
            rows = seq[positions]                                                           # (N, H)
            target = labels[positions]                                                      # (N,)
        else:
            positions, rows, target = None, seq, None
        mlm_logits, c_mlm = self._mlm_forward(rows)
        nsp_logits, c_nsp = linear_forward(pooled, self.params["cls.seq_relationship.weight"],
                                           self.params["cls.seq_relationship.bias"])        # (B, 2)
        mlm_loss = nsp_loss = None
        c_mlm_loss = c_nsp_loss = None
        if target is not None:
            mlm_loss, c_mlm_loss = cross_entropy_forward(mlm_logits, target)
        if nsl is not None:
            nsp_loss, c_nsp_loss = cross_entropy_forward(nsp_logits, nsl)
        losses = [x for x in (mlm_loss, nsp_loss) if x is not None]
        loss = float(sum(losses)) if losses else None
        self._cache = {"encoder": enc_cache, "positions": positions, "seq_shape": seq.shape, "mlm": c_mlm,
                       "nsp": c_nsp, "mlm_loss": c_mlm_loss, "nsp_loss": c_nsp_loss}
        return PreTrainingOutput(loss, None if mlm_loss is None else float(mlm_loss),
                                 None if nsp_loss is None else float(nsp_loss), mlm_logits, nsp_logits, hs, att,
                                 None if positions is None else tuple(positions))

    def backward(self) -> dict:
        """Gradient of ``out.loss`` (MLM mean + NSP mean) w.r.t. every parameter, keyed like ``params``."""
        cache = self._cache
        if cache is None:
            raise RuntimeError("backward() needs a forward() first")
        if cache["mlm_loss"] is None and cache["nsp_loss"] is None:
            raise RuntimeError("backward() needs a loss: pass labels and/or next_sentence_label to forward()")
        d_mlm = cross_entropy_backward(1.0, cache["mlm_loss"]) if cache["mlm_loss"] is not None else None
        d_nsp = cross_entropy_backward(1.0, cache["nsp_loss"]) if cache["nsp_loss"] is not None else None
        return self.backward_from(d_mlm, d_nsp)

    def backward_from(self, d_prediction_logits=None, d_seq_relationship_logits=None,
                      d_last_hidden_state=None) -> dict:
        """Backward from any upstream gradients of the outputs (e.g. for attribution)."""
        cache = self._backward_setup()
        grads = {}
        xp = self.xp
        dseq = xp.zeros(cache["seq_shape"], dtype=self.dtype) if d_last_hidden_state is None \
            else d_last_hidden_state.astype(self.dtype, copy=True)
        if d_prediction_logits is not None:
            drows = self._mlm_backward(d_prediction_logits, cache["mlm"], grads)
            if cache["positions"] is None:
                dseq += drows
            else:
                dseq[cache["positions"]] += drows    # the labelled positions are distinct: no repeats
        dpooled = None
        if d_seq_relationship_logits is not None:
            dpooled, dw, db = linear_backward(d_seq_relationship_logits, cache["nsp"])
            accumulate(grads, "cls.seq_relationship.weight", dw)
            accumulate(grads, "cls.seq_relationship.bias", db)
        self._encode_backward(dseq, dpooled, cache["encoder"], grads)
        # parameters no path reached (e.g. the NSP head without next_sentence_label) get zeros
        for name, value in self.params.items():
            if name not in grads:
                grads[name] = xp.zeros_like(value)
        return {name: grads[name] for name in self.params}


# =======================================================================================
# BertForSequenceClassification: pooler -> dropout -> linear
# =======================================================================================
class BertForSequenceClassification(_Encoder):
    def __init__(self, config: BertConfig, num_labels: int = 2, seed: int = 0, dtype=np.float32):
        if not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(f"num_labels must be an integer >= 2; got {num_labels!r}")
        self._setup(config, seed, dtype)
        self.num_labels = num_labels
        shapes = encoder_param_shapes(config, "bert.")
        shapes.update({"classifier.weight": (num_labels, config.hidden_size), "classifier.bias": (num_labels,)})
        self.params = init_params(shapes, config, self.init_rng, self.dtype)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None, training=False,
                output_hidden_states=False, output_attentions=False) -> SequenceClassifierOutput:
        seq, pooled, hs, att, ids, enc_cache = self._encode(input_ids, token_type_ids, attention_mask, training,
                                                            output_hidden_states, output_attentions)
        xp = get_array_module(seq)
        dropped, c_drop = dropout_forward(pooled, self.config.hidden_dropout_prob, self.rng, training)
        logits, c_cls = linear_forward(dropped, self.params["classifier.weight"], self.params["classifier.bias"])
        loss, c_loss = None, None
        if labels is not None:
            labels = _as_int_array("labels", labels, xp, 1)
            if labels.shape != (seq.shape[0],):
                raise ValueError(f"labels has shape {tuple(labels.shape)}; expected ({seq.shape[0]},)")
            if int(labels.min()) < 0 or int(labels.max()) >= self.num_labels:
                raise ValueError(f"labels must be in [0, {self.num_labels})")
            loss, c_loss = cross_entropy_forward(logits, labels)
            loss = float(loss)
        self._cache = {"encoder": enc_cache, "drop": c_drop, "cls": c_cls, "loss": c_loss,
                       "seq_shape": seq.shape}
        return SequenceClassifierOutput(loss, logits, hs, att)

    def backward(self) -> dict:
        if self._cache is None or self._cache["loss"] is None:
            raise RuntimeError("backward() needs a forward() with labels first")
        return self.backward_from(cross_entropy_backward(1.0, self._cache["loss"]))

    def backward_from(self, d_logits) -> dict:
        cache = self._backward_setup()
        grads = {}
        ddropped, dw, db = linear_backward(d_logits, cache["cls"])
        accumulate(grads, "classifier.weight", dw)
        accumulate(grads, "classifier.bias", db)
        dpooled = dropout_backward(ddropped, cache["drop"])
        dseq = self.xp.zeros(cache["seq_shape"], dtype=self.dtype)       # only [CLS] feeds the classifier
        self._encode_backward(dseq, dpooled, cache["encoder"], grads)
        return {name: grads[name] for name in self.params}
