r"""BERT for the fine-tuning tasks: masked LM, token classification, question answering, multiple choice.

Each class is Hugging Face's class of the same name, with its parameter names, so its checkpoints
load in ``transformers`` and back (``save_pretrained`` / ``from_pretrained``). Like the models in
``bert.py``: ``forward(..., training=False)`` returns an output with ``.loss`` (given labels) and
the logits, ``backward()`` the gradient of that loss for every parameter, keyed like ``params``;
every one trains through ``training.loop.run_loop``.

Data flow (B = batch, T = tokens, H = hidden, V = vocab, K = labels, C = choices)::

    BertForMaskedLM             sequence (B, T, H) ─ cls.predictions (tied decoder) ─> (B, T, V)
    BertForTokenClassification  sequence (B, T, H) ─ dropout ─ classifier ─> (B, T, K)
    BertForQuestionAnswering    sequence (B, T, H) ─ qa_outputs ─> start (B, T), end (B, T)
    BertForMultipleChoice       (B, C, T) as (B*C, T) ─ pooler ─ dropout ─ classifier ─> (B*C, 1) as (B, C)

The first three have no pooler (Hugging Face's ``add_pooling_layer=False``): their checkpoints have
no ``bert.pooler.*`` tensors. The heads are in ``heads.py`` and ``task_heads.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..config import BertConfig
from ..constants import IGNORE_INDEX
from ..nn.layers import cross_entropy_backward, cross_entropy_forward
from ..nn.xp import get_array_module
from .bert import _Encoder
from .heads import classifier_head_backward, classifier_head_forward, mlm_head_backward, mlm_head_forward
from .inputs import _as_int_array, _check_labels, check_inputs
from .params import Scope, classifier_shapes, encoder_param_shapes, pretraining_head_shapes
from .task_heads import qa_head_backward, qa_head_forward, span_loss_backward, span_loss_forward


@dataclass
class MaskedLMOutput:
    loss: Optional[float]
    logits: object                            # (B, T, V) without labels; (N, V) at the N labelled positions with
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    masked_positions: Optional[tuple] = None  # (batch index, token index) arrays of the N labelled positions


@dataclass
class TokenClassifierOutput:
    loss: Optional[float]
    logits: object                            # (B, T, K)
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


@dataclass
class QuestionAnsweringOutput:
    loss: Optional[float]                     # (CE(start) + CE(end)) / 2
    start_logits: object                      # (B, T)
    end_logits: object                        # (B, T)
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


@dataclass
class MultipleChoiceOutput:
    loss: Optional[float]
    logits: object                            # (B, C)
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


def _no_pooler_shapes(config: BertConfig) -> dict:
    return {k: v for k, v in encoder_param_shapes(config, "bert.").items() if not k.startswith("bert.pooler.")}


def _needs_loss(cache, what: str):
    if cache is None:
        raise RuntimeError("backward() needs a forward() first")
    if cache["loss"] is None:
        raise RuntimeError(f"backward() needs a loss: pass {what} to forward()")


# =======================================================================================
# BertForMaskedLM: encoder (no pooler) + cls.predictions, no next-sentence head
# =======================================================================================
class BertForMaskedLM(_Encoder):
    """The masked-LM model (what Hugging Face's fill-mask pipeline loads).

    With ``labels`` (B, T) (-100 = not predicted) the head runs only at the labelled positions, as
    ``BertForPreTraining`` does: ``logits`` is then (N, V), rows in the row-major order of the labelled
    positions (``masked_positions``). Without labels it covers every position: (B, T, V).
    """

    def __init__(self, config: BertConfig, seed: int = 0, dtype=np.float32, backend="auto"):
        heads = {k: v for k, v in pretraining_head_shapes(config).items() if k.startswith("cls.predictions.")}
        self._setup(config, seed, dtype, {**_no_pooler_shapes(config), **heads}, backend)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None, training=False,
                output_hidden_states=False, output_attentions=False) -> MaskedLMOutput:
        xp = self.xp
        input_ids, token_type_ids, attention_mask = check_inputs(self.config, xp, input_ids, token_type_ids,
                                                                 attention_mask)
        B, T = input_ids.shape
        labels, _ = _check_labels(self.config, xp, labels, None, B, T)
        positions = heads_rows = labelled = None
        if labels is not None:
            labelled = positions = xp.nonzero(labels != IGNORE_INDEX)                   # 2 x (N,)
            target = labels[positions]                                                  # (N,)
            flat = positions[0] * T + positions[1]                                      # (N,) sorted, distinct
            heads_rows = self._heads_rows(B, T, output_hidden_states, flat, cls=False)  # no pooler: labelled only
        enc = self._encode(input_ids, token_type_ids, attention_mask, training, output_hidden_states,
                           output_attentions, heads_rows, checked=True)
        seq = enc.sequence                                                               # (B, T, H) or (N, H)
        rows = None
        if labels is not None:
            rows = seq if heads_rows is not None else seq[positions]                    # (N, H)
            if heads_rows is not None:
                positions = (xp.arange(flat.size),)                                     # every gathered row
        logits, c_head = mlm_head_forward(seq if rows is None else rows, Scope(self.params, "cls.predictions."),
                                          self.backend, self.config)
        loss, c_loss = None, None
        if labels is not None:
            loss, c_loss = self.backend.cross_entropy_forward(logits, target)              # (N, V)
            loss = float(loss)
        self._cache = {"encoder": enc.cache, "head": c_head, "loss": c_loss, "positions": positions,
                       "seq_shape": seq.shape}
        return MaskedLMOutput(loss, logits, enc.hidden_states, enc.attentions,
                              None if labelled is None else tuple(labelled))

    def backward(self) -> dict:
        _needs_loss(self._cache, "labels")
        return self.backward_from(self.backend.cross_entropy_backward(1.0, self._cache["loss"]))

    def backward_from(self, d_logits) -> dict:
        """Backward from any upstream gradient of ``logits`` (the shape forward returned)."""
        cache = self._backward_setup()
        grads = {}
        drows = mlm_head_backward(d_logits, cache["head"], Scope(grads, "cls.predictions."), self.backend)
        if cache["positions"] is None:
            dseq = drows
        else:
            dseq = self.xp.zeros(cache["seq_shape"], dtype=drows.dtype)
            dseq[cache["positions"]] = drows                 # the labelled positions are distinct
        self._encode_backward(dseq, None, cache["encoder"], grads)
        return self._zero_untouched(grads)


# =======================================================================================
# BertForTokenClassification: encoder (no pooler) -> dropout -> classifier on every token
# =======================================================================================
class BertForTokenClassification(_Encoder):
    """A label per token (part of speech, named entities). ``labels`` (B, T): a class in [0, K), or
    -100 where no label counts (padding, special tokens, a word's later word pieces); the loss is the
    mean cross-entropy over the counted tokens."""

    def __init__(self, config: BertConfig, num_labels: int = 2, seed: int = 0, dtype=np.float32, backend="auto"):
        if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 2:
            raise ValueError(f"num_labels must be an integer >= 2; got {num_labels!r}")
        self.num_labels = num_labels
        self._setup(config, seed, dtype, {**_no_pooler_shapes(config), **classifier_shapes(config, num_labels)},
                    backend)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None, training=False,
                output_hidden_states=False, output_attentions=False) -> TokenClassifierOutput:
        enc = self._encode(input_ids, token_type_ids, attention_mask, training, output_hidden_states,
                           output_attentions)
        xp = get_array_module(enc.sequence)
        B, T, _ = enc.sequence.shape
        logits, c_head = classifier_head_forward(enc.sequence, Scope(self.params, "classifier."), self.backend,
                                                 self.config, self.rng, training,
                                                 getattr(self, "dropout_row_offset", 0))       # (B, T, K)
        loss, c_loss = None, None
        if labels is not None:
            labels = _as_int_array("labels", labels, xp, 2)
            if labels.shape != (B, T):
                raise ValueError(f"labels has shape {tuple(labels.shape)}; expected {(B, T)} like input_ids")
            if not bool(((labels == IGNORE_INDEX) | ((labels >= 0) & (labels < self.num_labels))).all()):
                raise ValueError(f"labels must be -100 (ignore) or a class in [0, {self.num_labels})")
            loss, c_loss = cross_entropy_forward(logits.reshape(B * T, -1), labels.reshape(-1))
            loss = float(loss)
        self._cache = {"encoder": enc.cache, "head": c_head, "loss": c_loss, "logits_shape": logits.shape}
        return TokenClassifierOutput(loss, logits, enc.hidden_states, enc.attentions)

    def backward(self) -> dict:
        _needs_loss(self._cache, "labels")
        d_logits = cross_entropy_backward(1.0, self._cache["loss"]).reshape(self._cache["logits_shape"])
        return self.backward_from(d_logits)

    def backward_from(self, d_logits) -> dict:
        """d_logits: (B, T, K)."""
        cache = self._backward_setup()
        grads = {}
        dseq = classifier_head_backward(d_logits, cache["head"], Scope(grads, "classifier."), self.backend)
        self._encode_backward(dseq, None, cache["encoder"], grads)
        return self._zero_untouched(grads)


# =======================================================================================
# BertForQuestionAnswering: encoder (no pooler) -> qa_outputs -> start/end logits
# =======================================================================================
class BertForQuestionAnswering(_Encoder):
    """Extractive QA: the answer is the span [start, end] of the input. ``start_positions``,
    ``end_positions`` (B,): token indices; one outside [0, T) is ignored (see ``span_loss_forward``)."""

    def __init__(self, config: BertConfig, seed: int = 0, dtype=np.float32, backend="auto"):
        H = config.hidden_size
        self._setup(config, seed, dtype, {**_no_pooler_shapes(config), "qa_outputs.weight": (2, H),
                                          "qa_outputs.bias": (2,)}, backend)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, start_positions=None,
                end_positions=None, training=False, output_hidden_states=False,
                output_attentions=False) -> QuestionAnsweringOutput:
        enc = self._encode(input_ids, token_type_ids, attention_mask, training, output_hidden_states,
                           output_attentions)
        xp = get_array_module(enc.sequence)
        B = enc.sequence.shape[0]
        start_logits, end_logits, c_head = qa_head_forward(enc.sequence, Scope(self.params, "qa_outputs."))
        if (start_positions is None) != (end_positions is None):
            raise ValueError("pass both start_positions and end_positions, or neither")
        loss, c_loss = None, None
        if start_positions is not None:
            positions = []
            for name, value in (("start_positions", start_positions), ("end_positions", end_positions)):
                value = _as_int_array(name, value, xp, 1)
                if value.shape != (B,):
                    raise ValueError(f"{name} has shape {tuple(value.shape)}; expected ({B},)")
                positions.append(value)
            loss, c_loss = span_loss_forward(start_logits, end_logits, *positions)
            loss = float(loss)
        self._cache = {"encoder": enc.cache, "head": c_head, "loss": c_loss}
        return QuestionAnsweringOutput(loss, start_logits, end_logits, enc.hidden_states, enc.attentions)

    def backward(self) -> dict:
        _needs_loss(self._cache, "start_positions and end_positions")
        return self.backward_from(*span_loss_backward(1.0, self._cache["loss"]))

    def backward_from(self, d_start_logits, d_end_logits) -> dict:
        """d_start_logits, d_end_logits: (B, T)."""
        cache = self._backward_setup()
        grads = {}
        dseq = qa_head_backward(d_start_logits, d_end_logits, cache["head"], Scope(grads, "qa_outputs."))
        self._encode_backward(dseq, None, cache["encoder"], grads)
        return self._zero_untouched(grads)


# =======================================================================================
# BertForMultipleChoice: each choice encoded alone, pooled, scored by one linear unit
# =======================================================================================
class BertForMultipleChoice(_Encoder):
    """Pick one of C candidate continuations: inputs (B, C, T), logits (B, C), ``labels`` (B,) in [0, C).
    Each (context, choice) pair is a row of a (B*C, T) batch; the classifier (1, H) scores its pooled output."""

    def __init__(self, config: BertConfig, seed: int = 0, dtype=np.float32, backend="auto"):
        self._setup(config, seed, dtype, {**encoder_param_shapes(config, "bert."), **classifier_shapes(config, 1)},
                    backend)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None, training=False,
                output_hidden_states=False, output_attentions=False) -> MultipleChoiceOutput:
        xp = self.xp
        ids = _as_int_array("input_ids", input_ids, xp, 3)
        if ids is None:
            raise ValueError("input_ids is required")
        B, C, T = ids.shape
        flat = [ids.reshape(B * C, T)]
        for name, value in (("token_type_ids", token_type_ids), ("attention_mask", attention_mask)):
            if value is not None:
                value = xp.asarray(value)
                if value.shape != ids.shape:
                    raise ValueError(f"{name} has shape {tuple(value.shape)}; expected {(B, C, T)} like input_ids")
                value = value.reshape(B * C, T)
            flat.append(value)
        enc = self._encode(*flat, training, output_hidden_states, output_attentions,
                           self._heads_rows(B * C, T, output_hidden_states))              # the pooler reads [CLS]
        scores, c_head = classifier_head_forward(enc.pooled, Scope(self.params, "classifier."), self.backend,
                                                 self.config, self.rng, training)       # (B*C, 1)
        logits = scores.reshape(B, C)
        loss, c_loss = None, None
        if labels is not None:
            labels = _as_int_array("labels", labels, xp, 1)
            if labels.shape != (B,):
                raise ValueError(f"labels has shape {tuple(labels.shape)}; expected ({B},)")
            if int(labels.min()) < 0 or int(labels.max()) >= C:
                raise ValueError(f"labels must be a choice in [0, {C})")
            loss, c_loss = cross_entropy_forward(logits, labels)
            loss = float(loss)
        self._cache = {"encoder": enc.cache, "head": c_head, "loss": c_loss, "seq_shape": enc.sequence.shape}
        return MultipleChoiceOutput(loss, logits, enc.hidden_states, enc.attentions)

    def backward(self) -> dict:
        _needs_loss(self._cache, "labels")
        return self.backward_from(cross_entropy_backward(1.0, self._cache["loss"]))

    def backward_from(self, d_logits) -> dict:
        """d_logits: (B, C)."""
        cache = self._backward_setup()
        grads = {}
        dpooled = classifier_head_backward(d_logits.reshape(-1, 1), cache["head"], Scope(grads, "classifier."),
                                           self.backend)                                # (B*C, H)
        dseq = self.xp.zeros(cache["seq_shape"], dtype=self.dtype)       # only [CLS] feeds the classifier
        self._encode_backward(dseq, dpooled, cache["encoder"], grads)
        return self._zero_untouched(grads)
