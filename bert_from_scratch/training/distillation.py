r"""Pretraining with a teacher: a small student learns all-MiniLM-L6-v2's hidden states and attention.

:class:`Distiller` puts a student ``BertModel``, a frozen teacher ``BertModel`` and the projections of
the distillation loss (``nn/distillation_losses.py``) behind the interface of a model the one training
loop trains (``training/loop.py``): ``params`` (the student's encoder and the projections, updated in
place by AdamW), ``forward(..., training)`` with a ``.loss``, and ``backward()`` -> gradients.

Layer map (TinyBERT's uniform strategy): with ``Ls`` student and ``Lt`` teacher layers, the student's
hidden state ``i`` (0 = embeddings) learns the teacher's ``round(i * Lt / Ls)``, and the student's
attention of layer ``i`` (1-based) that of the teacher's layer ``round(i * Lt / Ls)``. For 2 student and
6 teacher layers: embeddings -> embeddings, layer 1 -> layer 3, layer 2 -> layer 6 (the last).

.. math::
    L = \sum_{i=0}^{L_s} L_{\text{hid}}\big(h^s_i, h^t_{m(i)}\big)
        + \sum_{i=1}^{L_s} L_{\text{att}}\big(P^s_i, P^t_{m(i)}\big)

:func:`init_embeddings_from_teacher` starts the student's embedding tables from the teacher's, reduced to
the student's width by PCA (the teacher's word-embedding principal directions), so words the
distillation text never shows still start from the teacher's knowledge of them. The student shares
the teacher's vocabulary: the losses compare the two models token by token.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..model.params import init_params
from ..nn.distillation_losses import (attention_loss_backward, attention_loss_forward, head_average,
                                      hidden_state_loss_backward, hidden_state_loss_forward)

PROJECTION = "distill.hidden.{}."        # + "weight" (Ht, Hs) / "bias" (Ht,): student state i -> teacher space


class DistillationOutput(NamedTuple):
    loss: float                  # hidden + attention
    hidden_loss: float           # sum over the mapped hidden states
    attention_loss: float        # sum over the mapped layers


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student hidden state i (0 = embeddings, ..., Ls) -> the teacher's hidden state it learns."""
    return [int(round(i * teacher_layers / student_layers)) for i in range(student_layers + 1)]


def init_embeddings_from_teacher(student, teacher) -> float:
    """Set the student's word, position and token-type tables to the teacher's projected on the top
    ``Hs`` principal directions of the teacher's word embeddings; returns the share of the word
    embeddings' variance those directions keep. Needs the same vocabulary and ``Hs <= Ht``."""
    s_cfg, t_cfg = student.config, teacher.config
    if s_cfg.vocab_size != t_cfg.vocab_size:
        raise ValueError(f"the student's vocabulary ({s_cfg.vocab_size}) must be the teacher's "
                         f"({t_cfg.vocab_size}): distillation compares them token by token")
    if s_cfg.hidden_size > t_cfg.hidden_size:
        raise ValueError(f"the student ({s_cfg.hidden_size}) is wider than the teacher ({t_cfg.hidden_size})")
    tp, sp = teacher.params, student.params
    tb, sb = teacher.base_prefix, student.base_prefix
    words = np.asarray(tp[tb + "embeddings.word_embeddings.weight"], dtype=np.float64)   # (V, Ht)
    mean = words.mean(axis=0)
    _, sing, vt = np.linalg.svd(words - mean, full_matrices=False)                       # vt: (Ht, Ht)
    basis = vt[:s_cfg.hidden_size].T                                                     # (Ht, Hs)
    for table in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        t_table = np.asarray(tp[f"{tb}embeddings.{table}.weight"], dtype=np.float64)
        rows = min(len(t_table), len(sp[f"{sb}embeddings.{table}.weight"]))
        centred = t_table[:rows] - (mean if table == "word_embeddings" else 0.0)
        sp[f"{sb}embeddings.{table}.weight"][:rows] = centred @ basis                     # in place: (rows, Hs)
    return float((sing[:s_cfg.hidden_size] ** 2).sum() / (sing ** 2).sum())


class TeacherTargets(NamedTuple):
    hidden: list                 # (Ls + 1) x (B, T, Ht): the teacher's hidden states the student's learn
    attention: list              # Ls x (B, T, T): the teacher's attention, averaged over its heads


def teacher_targets(teacher, mapping: list[int], input_ids, token_type_ids, attention_mask) -> TeacherTargets:
    """Run the frozen teacher (no dropout) and keep what the losses compare (see :func:`layer_map`)."""
    t = teacher.encode(input_ids, token_type_ids, attention_mask, training=False, output_hidden_states=True,
                       output_attentions=True)
    return TeacherTargets([t.hidden_states[j] for j in mapping],
                          [head_average(t.attentions[j - 1]) for j in mapping[1:]])


class Distiller:
    """The student and its distillation loss, trainable by ``training.loop.run_loop`` (see the module docstring)."""

    def __init__(self, student, teacher, seed: int = 0, hidden_weight: float = 1.0, attention_weight: float = 1.0):
        s_cfg, t_cfg = student.config, teacher.config
        if s_cfg.vocab_size != t_cfg.vocab_size:
            raise ValueError(f"the student's vocabulary ({s_cfg.vocab_size}) must be the teacher's "
                             f"({t_cfg.vocab_size})")
        self.student, self.teacher = student, teacher
        self.map = layer_map(s_cfg.num_hidden_layers, t_cfg.num_hidden_layers)
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight
        self.xp, self.dtype, self.backend = student.xp, student.dtype, student.backend
        shapes = {}
        for i in range(len(self.map)):
            shapes[PROJECTION.format(i) + "weight"] = (t_cfg.hidden_size, s_cfg.hidden_size)
            shapes[PROJECTION.format(i) + "bias"] = (t_cfg.hidden_size,)
        self.projections = {k: self.xp.asarray(v) for k, v in
                            init_params(shapes, s_cfg, np.random.default_rng(seed), self.dtype).items()}
        # trained: the student's encoder (its pooler sees no loss and stays as initialised) and the projections
        self.params = {**{k: v for k, v in student.params.items() if "pooler." not in k}, **self.projections}
        self._cache = None

    def teacher_targets(self, input_ids, token_type_ids, attention_mask) -> TeacherTargets:
        """The teacher's side of the losses: its mapped hidden states and head-averaged attentions."""
        return teacher_targets(self.teacher, self.map, input_ids, token_type_ids, attention_mask)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, teacher: TeacherTargets | None = None,
                training=False) -> DistillationOutput:
        """input_ids (B, T) in the shared vocabulary -> the losses; keeps what ``backward`` needs.
        ``teacher``: the teacher's targets for this batch when computed beforehand (the teacher is frozen,
        so a job computes them once per text instead of once per epoch); None: the teacher runs now."""
        mask = attention_mask if attention_mask is not None else self.xp.ones(np.shape(input_ids), dtype=np.int64)
        t = teacher or self.teacher_targets(input_ids, token_type_ids, mask)
        s = self.student.forward(input_ids, token_type_ids, mask, training=training, output_hidden_states=True,
                                 output_attentions=True)
        mask = self.xp.asarray(mask)
        hidden, c_hidden = 0.0, []
        for i in range(len(self.map)):
            p = PROJECTION.format(i)
            loss, cache = hidden_state_loss_forward(s.hidden_states[i], self.params[p + "weight"],
                                                    self.params[p + "bias"], t.hidden[i], mask)
            hidden += loss
            c_hidden.append(cache)
        attention, c_att = 0.0, []
        for i in range(len(self.map) - 1):                     # student layer i + 1 <- teacher layer map[i + 1]
            loss, cache = attention_loss_forward(s.attentions[i], t.attention[i], mask)
            attention += loss
            c_att.append(cache)
        self._cache = (c_hidden, c_att)
        total = self.hidden_weight * hidden + self.attention_weight * attention
        return DistillationOutput(total, hidden, attention)

    def backward(self) -> dict:
        """Gradients of the last forward's ``loss`` for every entry of ``params`` (same keys, same order)."""
        if self._cache is None:
            raise RuntimeError("backward() needs a forward() first")
        c_hidden, c_att = self._cache
        grads, d_hidden = {}, []
        for i, cache in enumerate(c_hidden):
            dh, dw, db = hidden_state_loss_backward(self.hidden_weight, cache)
            grads[PROJECTION.format(i) + "weight"], grads[PROJECTION.format(i) + "bias"] = dw, db
            d_hidden.append(dh)
        d_att = [attention_loss_backward(self.attention_weight, cache) for cache in c_att]
        grads.update(self.student.backward(d_hidden_states=tuple(d_hidden), d_attentions=tuple(d_att)))
        return {name: grads[name] for name in self.params}
