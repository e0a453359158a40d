r"""BERT's model classes: the encoder (``BertModel``) and its task heads, composed from block functions.

The parameters live in one flat dict, ``model.params``, keyed by Hugging Face's state-dict
names (``bert.encoder.layer.0.attention.self.query.weight``, ...), so loading and saving a
checkpoint is a rename-free copy. Gradients come back in a dict with the same keys.

Data flow (B = batch, T = tokens, H = hidden size, V = vocab); the blocks are in ``blocks.py``,
the heads in ``heads.py``, each a forward/backward pair::

    input_ids (B, T) ─ embeddings ─> (B, T, H) ─ L x encoder layer ─> sequence_output (B, T, H)
        sequence_output[:, 0] ─ pooler (dense + tanh) ─> pooled (B, H) ─ NSP head ─> (B, 2)
        sequence_output[labelled] ─ MLM head (dense, GELU, LayerNorm, tied decoder) ─> (N, V)

**Backends.** A model runs its elementwise layers, attention core and optimizer update through one
:class:`~bert_from_scratch.nn.backend.Backend`, chosen when it is built or moved:
``BertModel(cfg, backend="numpy")`` is the readable reference, ``"numba"`` the fused CPU kernels,
``"cupy"`` the GPU, ``"auto"`` (default) the fastest that fits the arrays.
``model.with_backend("numpy")`` is the same model (shared parameters) on another backend.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..config import BertConfig
from ..constants import IGNORE_INDEX
from ..nn.backend import get_backend
from ..nn.layers import cross_entropy_backward, cross_entropy_forward
from ..nn.xp import get_array_module, to_numpy
from .attention_rows import scatter_query_rows
from .blocks import EncoderOutput, encoder_backward, encoder_forward
from .heads import (check_pooling, classifier_head_backward, classifier_head_forward, mlm_head_backward,
                    mlm_head_forward, nsp_head_backward, nsp_head_forward, sequence_features_backward,
                    sequence_features_forward)
from .inputs import _check_labels, check_inputs
from .params import Scope, classifier_shapes, encoder_param_shapes, init_params, pretraining_head_shapes
from .task_heads import check_problem_type, classification_loss_backward, classification_loss_forward


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
# What every model shares: parameters, backend, the encoder, moving, saving
# =======================================================================================
class _Encoder:
    """Encoder + pooler over ``self.params`` with names under ``self.base_prefix``."""

    base_prefix = "bert."
    #: the models whose heads read some rows of the last hidden state only (pretraining: [CLS] and the labelled
    #: rows; sequence classification and multiple choice: [CLS]) compute the last layer's output dense and FFN
    #: at those rows alone (``encoder_forward(rows=...)``): the same outputs, loss and gradients, less work.
    #: False computes every row (as the tests compare).
    last_layer_at_heads_rows = True

    def _heads_rows(self, B: int, T: int, output_hidden_states: bool, labelled=None, cls: bool = True):
        """(M,) sorted, distinct rows of the flattened B*T batch that the heads read: ``labelled`` (flat indices,
        sorted and distinct, or None) and, with ``cls``, the [CLS] rows ``b * T``. None (compute every row) when
        ``last_layer_at_heads_rows`` is off, the hidden states are asked for, or the rows are all or none of them."""
        if not self.last_layer_at_heads_rows or output_hidden_states:
            return None
        xp = self.xp
        parts = ([] if labelled is None else [labelled]) + ([xp.arange(B) * T] if cls else [])
        rows = parts[0] if len(parts) == 1 else xp.unique(xp.concatenate(parts))
        return rows if 0 < rows.size < B * T else None

    def _setup(self, config: BertConfig, seed: int, dtype, shapes: dict, backend):
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a BertConfig; got {type(config).__name__}")
        self.config = config
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64; got {self.dtype}")
        self.rng = np.random.default_rng(seed)   # dropout masks and attention-dropout seeds
        self.init_rng = np.random.default_rng(seed)
        self._cache = None
        self.params = init_params(shapes, config, self.init_rng, self.dtype)
        self.backend = get_backend(backend, like=self.params[self.base_prefix + "embeddings.word_embeddings.weight"])

    @property
    def xp(self):
        return get_array_module(next(iter(self.params.values())))

    # ---- the encoder ------------------------------------------------------------------------
    def _encode(self, input_ids, token_type_ids, attention_mask, training, output_hidden_states,
                output_attentions, rows=None, checked: bool = False) -> EncoderOutput:
        """``checked``: the inputs already went through ``check_inputs`` (a forward that needed their shape)."""
        ids, tt, mask = ((input_ids, token_type_ids, attention_mask) if checked else
                         check_inputs(self.config, self.xp, input_ids, token_type_ids, attention_mask))
        return encoder_forward(ids, tt, mask, Scope(self.params, self.base_prefix), self.backend, self.config,
                               self.rng, training, output_hidden_states, output_attentions,
                               getattr(self, "dropout_row_offset", 0), rows)   # offset: set by distributed/job.py

    def _encode_backward(self, dseq, dpooled, enc_cache, grads: dict, d_hidden_states=None,
                         d_attentions=None) -> None:
        if dseq is None:
            dseq = self.xp.zeros(enc_cache.seq_shape, dtype=self.dtype)
        encoder_backward(dseq, dpooled, enc_cache, Scope(self.params, self.base_prefix),
                         Scope(grads, self.base_prefix), self.backend,
                         getattr(self, "grad_ready_hook", None),          # set by distributed/ (overlap)
                         d_hidden_states, d_attentions)

    def encode(self, input_ids, token_type_ids=None, attention_mask=None, training=False,
               output_hidden_states=False, output_attentions=False) -> BertModelOutput:
        """Run the encoder and pooler only (no task head): for embeddings, probing and plots.
        Keeps no backward cache (a following ``backward()`` belongs to the last ``forward()``)."""
        enc = self._encode(input_ids, token_type_ids, attention_mask, training, output_hidden_states,
                           output_attentions)
        return BertModelOutput(enc.sequence, enc.pooled, enc.hidden_states, enc.attentions)

    def attention_grads(self):
        """dL/dP for every layer's attention probabilities, (B, nh, T, T) each, from the last backward.

        Needs the reference backend (the fused kernels never form P): ``model.with_backend("numpy")``."""
        if self._cache is None:
            raise RuntimeError("call forward and backward first")
        if not self.backend.stores_attention_probabilities:
            raise RuntimeError(f"attention gradients are only kept by the 'numpy' backend (this model runs on "
                               f"{self.backend.name!r}); use model.with_backend('numpy')")
        out = []
        for layer in self._cache["encoder"].layers:
            rows = layer.attention.query_rows             # the last layer's queries at the heads' rows only
            core = layer.attention.core if rows is None else rows.core
            if "grad_probs" not in core:
                raise RuntimeError("call backward() first: the attention gradients are made by the backward")
            out.append(core["grad_probs"] if rows is None else scatter_query_rows(core["grad_probs"], rows))
        return out

    # ---- backends and devices --------------------------------------------------------------
    def with_backend(self, backend):
        """This model on another backend: a shallow copy that shares ``params`` (and ``rng``)."""
        other = copy.copy(self)
        other.backend = get_backend(backend, like=next(iter(self.params.values())))
        other._cache = None
        return other

    def to(self, device: str, backend="auto"):
        """Move the parameters to "cupy" (GPU) or "numpy" (host), in place, and pick ``backend``
        for them ("auto": cupy on the GPU, numba or numpy on the host); returns self."""
        if device in ("cupy", "cuda", "gpu"):
            import cupy  # type: ignore

            self.params = {k: cupy.asarray(v) for k, v in self.params.items()}
        elif device in ("numpy", "cpu"):
            self.params = {k: to_numpy(v) for k, v in self.params.items()}
        else:
            raise ValueError(f"unknown device {device!r}; use 'numpy' or 'cupy'")
        self.backend = get_backend(backend, like=next(iter(self.params.values())))
        self._cache = None
        return self

    # ---- utilities ------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return int(sum(v.size for v in self.params.values()))

    def _backward_setup(self):
        if self._cache is None:
            raise RuntimeError("backward() needs a forward() first")
        return self._cache

    def _zero_untouched(self, grads: dict) -> dict:
        """Parameters no path reached (e.g. the NSP head without next_sentence_label) get zeros; params' order."""
        for name, value in self.params.items():
            if name not in grads:
                grads[name] = self.xp.zeros_like(value)
        return {name: grads[name] for name in self.params}

    def save_pretrained(self, folder):
        from ..checkpoint import save_pretrained

        save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, folder, dtype=np.float32, **kwargs):
        from ..checkpoint import from_pretrained

        return from_pretrained(cls, folder, dtype=dtype, **kwargs)


# =======================================================================================
# BertModel: encoder + pooler, Hugging Face's BertModel names (no "bert." prefix)
# =======================================================================================
class BertModel(_Encoder):
    """``add_pooling_layer=False``: no pooler (as the encoder of a token-classification or QA checkpoint);
    ``pooler_output`` is then None. ``from_pretrained`` picks it when the folder has no pooler."""
    base_prefix = ""

    def __init__(self, config: BertConfig, seed: int = 0, dtype=np.float32, backend="auto",
                 add_pooling_layer: bool = True):
        shapes = encoder_param_shapes(config, "")
        if not add_pooling_layer:
            shapes = {k: v for k, v in shapes.items() if not k.startswith("pooler.")}
        self._setup(config, seed, dtype, shapes, backend)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, training=False,
                output_hidden_states=False, output_attentions=False) -> BertModelOutput:
        enc = self._encode(input_ids, token_type_ids, attention_mask, training, output_hidden_states,
                           output_attentions)
        self._cache = {"encoder": enc.cache}
        return BertModelOutput(enc.sequence, enc.pooled, enc.hidden_states, enc.attentions)

    def backward(self, d_last_hidden_state=None, d_pooler_output=None, d_hidden_states=None,
                 d_attentions=None) -> dict:
        """Gradients of ``sum(d_last_hidden_state * last_hidden_state) + sum(d_pooler_output * pooled)``,
        plus ``sum(d_hidden_states[l] * hidden_states[l])`` and ``sum(d_attentions[l] * attentions[l])`` for
        those given (tuples as the forward's outputs, Nones allowed; attentions need ``output_attentions``)."""
        cache = self._backward_setup()
        if d_pooler_output is not None and "pooler.dense.weight" not in self.params:
            raise ValueError("this BertModel has no pooler (add_pooling_layer=False): there is no pooler_output "
                             "to take a gradient of")
        grads = {}
        self._encode_backward(d_last_hidden_state, d_pooler_output, cache["encoder"], grads, d_hidden_states,
                              d_attentions)
        return grads


# =======================================================================================
# BertForPreTraining: encoder + masked-LM head + next-sentence head
# =======================================================================================
class BertForPreTraining(_Encoder):
    """BERT with the masked-LM and next-sentence-prediction heads (Hugging Face's ``BertForPreTraining``).

    ``last_layer_at_heads_rows`` (default True): with ``labels``, the last layer's output is computed only at the
    rows the heads read, the [CLS] rows and the labelled ones (``encoder_forward``'s ``rows``): the same loss and
    gradients (tested against False), about a fifth less work at the default pretraining size."""

    def __init__(self, config: BertConfig, seed: int = 0, dtype=np.float32, backend="auto"):
        shapes = {**encoder_param_shapes(config, "bert."), **pretraining_head_shapes(config)}
        # the decoder weight is bert.embeddings.word_embeddings.weight itself (tied): no entry of its own
        self._setup(config, seed, dtype, shapes, backend)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                next_sentence_label=None, training=False, output_hidden_states=False,
                output_attentions=False) -> PreTrainingOutput:
        """Forward pass; keeps what ``backward()`` needs. See ``PreTrainingOutput`` for the fields.

        With ``labels`` (B, T) (-100 = not predicted) the MLM head runs only at the labelled
        positions, as google-research/bert does: ``prediction_logits`` is then (N, V), rows in
        the row-major order of the labelled positions. Without labels it covers every position.
        """
        xp = self.xp
        input_ids, token_type_ids, attention_mask = check_inputs(self.config, xp, input_ids, token_type_ids,
                                                                 attention_mask)   # clear errors first
        B, T = input_ids.shape
        labels, nsl = _check_labels(self.config, xp, labels, next_sentence_label, B, T)
        heads_rows = labelled = None
        if labels is not None:
            labelled = positions = xp.nonzero(labels != IGNORE_INDEX)                       # 2 x (N,)
            target = labels[positions]                                                      # (N,)
            flat = positions[0] * T + positions[1]                                          # (N,) rows of B*T
            heads_rows = self._heads_rows(B, T, output_hidden_states, flat)                 # + [CLS]: (M,) sorted
        enc = self._encode(input_ids, token_type_ids, attention_mask, training, output_hidden_states,
                           output_attentions, heads_rows, checked=True)
        seq = enc.sequence                                                                  # (B, T, H) or (M, H)
        if labels is None:
            positions, rows, target = None, seq, None
        elif heads_rows is not None:
            positions = (xp.searchsorted(heads_rows, flat),)                                # labelled rows among M
            rows = seq[positions]                                                           # (N, H)
        else:
            rows = seq[positions]                                                           # (N, H)
        mlm_logits, c_mlm = mlm_head_forward(rows, Scope(self.params, "cls.predictions."), self.backend, self.config)
        nsp_logits, c_nsp = nsp_head_forward(enc.pooled, Scope(self.params, "cls.seq_relationship."))   # (B, 2)
        mlm_loss = nsp_loss = None
        c_mlm_loss = c_nsp_loss = None
        if target is not None:
            mlm_loss, c_mlm_loss = self.backend.cross_entropy_forward(mlm_logits, target)   # (N, V): fused
        if nsl is not None:
            nsp_loss, c_nsp_loss = cross_entropy_forward(nsp_logits, nsl)
        losses = [x for x in (mlm_loss, nsp_loss) if x is not None]
        loss = float(sum(losses)) if losses else None
        self._cache = {"encoder": enc.cache, "positions": positions, "seq_shape": seq.shape, "mlm": c_mlm,
                       "nsp": c_nsp, "mlm_loss": c_mlm_loss, "nsp_loss": c_nsp_loss}
        return PreTrainingOutput(loss, None if mlm_loss is None else float(mlm_loss),
                                 None if nsp_loss is None else float(nsp_loss), mlm_logits, nsp_logits,
                                 enc.hidden_states, enc.attentions,
                                 None if labelled is None else tuple(labelled))

    def backward(self, mlm_scale: float = 1.0, nsp_scale: float = 1.0) -> dict:
        """Gradient of ``out.loss`` (MLM mean + NSP mean) w.r.t. every parameter, keyed like ``params``.

        ``mlm_scale``, ``nsp_scale``: the gradient of ``mlm_scale * MLM + nsp_scale * NSP`` instead (a
        data-parallel rank weights each mean by its share of the global batch: ``distributed/gradients.py``)."""
        cache = self._cache
        if cache is None:
            raise RuntimeError("backward() needs a forward() first")
        if cache["mlm_loss"] is None and cache["nsp_loss"] is None:
            raise RuntimeError("backward() needs a loss: pass labels and/or next_sentence_label to forward()")
        d_mlm = None if cache["mlm_loss"] is None else self.backend.cross_entropy_backward(mlm_scale,
                                                                                          cache["mlm_loss"])
        d_nsp = cross_entropy_backward(nsp_scale, cache["nsp_loss"]) if cache["nsp_loss"] is not None else None
        return self.backward_from(d_mlm, d_nsp)

    def backward_from(self, d_prediction_logits=None, d_seq_relationship_logits=None,
                      d_last_hidden_state=None) -> dict:
        """Backward from any upstream gradients of the outputs (e.g. for attribution)."""
        cache = self._backward_setup()
        grads = {}
        if d_last_hidden_state is not None and len(cache["seq_shape"]) == 2:
            raise ValueError("d_last_hidden_state needs the whole last hidden state: run forward() with "
                             "output_hidden_states=True (or last_layer_at_heads_rows=False) when labels are given")
        dseq = self.xp.zeros(cache["seq_shape"], dtype=self.dtype) if d_last_hidden_state is None \
            else d_last_hidden_state.astype(self.dtype, copy=True)
        if d_prediction_logits is not None:
            drows = mlm_head_backward(d_prediction_logits, cache["mlm"], Scope(grads, "cls.predictions."),
                                      self.backend)
            if cache["positions"] is None:
                dseq += drows
            else:
                dseq[cache["positions"]] += drows    # the labelled positions are distinct: no repeats
        dpooled = None
        if d_seq_relationship_logits is not None:
            dpooled = nsp_head_backward(d_seq_relationship_logits, cache["nsp"], Scope(grads, "cls.seq_relationship."))
        self._encode_backward(dseq, dpooled, cache["encoder"], grads)
        return self._zero_untouched(grads)


# =======================================================================================
# BertForSequenceClassification: pooler (or the tokens' mean) -> dropout -> linear
# =======================================================================================
class BertForSequenceClassification(_Encoder):
    """``problem_type`` as Hugging Face's config: "single_label_classification" (softmax cross-entropy),
    "multi_label_classification" (a sigmoid per label, binary cross-entropy; float labels (B, K)) or "regression"
    (mean squared error; ``num_labels=1``: labels (B,)); None resolves as Hugging Face does (``task_heads.py``).
    ``pooling``: what the classifier reads, "cls" (the pooler's output, as Hugging Face) or "mean" (the last
    layer's mean over the real tokens, Sentence-BERT's; ``heads.sequence_features_forward``)."""

    def __init__(self, config: BertConfig, num_labels: int = 2, seed: int = 0, dtype=np.float32, backend="auto",
                 problem_type=None, pooling: str = "cls"):
        self.problem_type = check_problem_type(problem_type, num_labels)
        self.pooling = check_pooling(pooling)
        self.num_labels = num_labels
        self._setup(config, seed, dtype, {**encoder_param_shapes(config, "bert."),
                                          **classifier_shapes(config, num_labels)}, backend)

    def features(self, input_ids, token_type_ids=None, attention_mask=None):
        """What the classifier reads, (B, H), without dropout and without a backward cache (LP-FT's phase 1)."""
        out = self.encode(input_ids, token_type_ids, attention_mask)                    # checks the inputs
        return sequence_features_forward(out.last_hidden_state, out.pooler_output, attention_mask, self.pooling)[0]

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None, training=False,
                output_hidden_states=False, output_attentions=False) -> SequenceClassifierOutput:
        input_ids, token_type_ids, attention_mask = check_inputs(self.config, self.xp, input_ids, token_type_ids,
                                                                 attention_mask)
        rows = self._heads_rows(*input_ids.shape, output_hidden_states) if self.pooling == "cls" else None
        enc = self._encode(input_ids, token_type_ids, attention_mask, training, output_hidden_states,
                           output_attentions, rows, checked=True)
        features, c_features = sequence_features_forward(enc.sequence, enc.pooled, attention_mask, self.pooling)
        logits, c_head = classifier_head_forward(features, Scope(self.params, "classifier."), self.backend, self.config,
                                                 self.rng, training, getattr(self, "dropout_row_offset", 0))
        loss, c_loss = None, None
        if labels is not None:
            loss, c_loss = classification_loss_forward(logits, labels, self.problem_type, self.num_labels, self.xp)
        self._cache = {"encoder": enc.cache, "head": c_head, "loss": c_loss, "features": c_features}
        return SequenceClassifierOutput(loss, logits, enc.hidden_states, enc.attentions)

    def backward(self) -> dict:
        if self._cache is None or self._cache["loss"] is None:
            raise RuntimeError("backward() needs a forward() with labels first")
        return self.backward_from(classification_loss_backward(1.0, self._cache["loss"]))

    def backward_from(self, d_logits) -> dict:
        cache = self._backward_setup()
        grads = {}
        dfeatures = classifier_head_backward(d_logits, cache["head"], Scope(grads, "classifier."), self.backend)
        dseq, dpooled = sequence_features_backward(dfeatures, cache["features"], self.pooling)
        self._encode_backward(dseq, dpooled, cache["encoder"], grads)   # dseq None: only [CLS] feeds the pooler
        return self._zero_untouched(grads)                              # the pooler's, when it is not read
