"""The parameters of BERT: Hugging Face's names and shapes, BERT's initialisation, and a named view.

``model.params`` is one flat dict keyed by Hugging Face's state-dict names
(``bert.encoder.layer.0.attention.self.query.weight``, ...), so a checkpoint loads and saves as a
rename-free copy. Blocks see it through a :class:`Scope`: ``P = Scope(params, "bert.encoder.layer.0.")``,
then ``P["intermediate.dense.weight"]``; the same view over the gradient dict accumulates,
``G.add("intermediate.dense.weight", dw)`` (``+=``, as llm.c does: a tensor used twice, like the
tied word embedding, gets the sum of both uses without any special case).
"""
from __future__ import annotations

import numpy as np

from ..config import BertConfig


class Scope:
    """The tensors of a dict whose names start with ``prefix``, addressed by the rest of the name."""

    __slots__ = ("tensors", "prefix")

    def __init__(self, tensors: dict, prefix: str = ""):
        self.tensors, self.prefix = tensors, prefix

    def __getitem__(self, name: str):
        return self.tensors[self.prefix + name]

    def __contains__(self, name: str) -> bool:
        return self.prefix + name in self.tensors

    def __truediv__(self, sub: str) -> "Scope":
        """``P / "attention"`` is the scope of ``prefix + "attention."``."""
        return Scope(self.tensors, f"{self.prefix}{sub}.")

    def add(self, name: str, value) -> None:
        """tensors[prefix + name] += value (creating it on first use): gradients accumulate."""
        key = self.prefix + name
        if key in self.tensors:
            self.tensors[key] += value
        else:
            self.tensors[key] = value

    def __repr__(self) -> str:
        return f"Scope({self.prefix!r}, {sum(k.startswith(self.prefix) for k in self.tensors)} tensors)"


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


def pretraining_head_shapes(cfg: BertConfig) -> dict:
    """The MLM transform + decoder bias and the NSP classifier; the decoder weight is the word embedding (tied)."""
    H, V = cfg.hidden_size, cfg.vocab_size
    return {
        "cls.predictions.bias": (V,),                          # the decoder's own bias
        "cls.predictions.transform.dense.weight": (H, H),
        "cls.predictions.transform.dense.bias": (H,),
        "cls.predictions.transform.LayerNorm.weight": (H,),
        "cls.predictions.transform.LayerNorm.bias": (H,),
        "cls.seq_relationship.weight": (2, H),
        "cls.seq_relationship.bias": (2,),
    }


def classifier_shapes(cfg: BertConfig, num_labels: int) -> dict:
    return {"classifier.weight": (num_labels, cfg.hidden_size), "classifier.bias": (num_labels,)}
