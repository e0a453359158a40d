"""What every pipeline shares: load a folder, encode with truncation, run the model in padded batches.

A pipeline is ``text(s) -> encodings -> batches -> model.forward -> per-example arrays -> task output``.
Only the first and the last step differ between tasks (each task file says them); this file does
the rest, the way Hugging Face's ``Pipeline`` does:

- **the folder**: one of our checkpoints or run folders, a Hugging Face folder (``vocab.txt`` or
  ``tokenizer.json``), or a known model name (``"all-MiniLM-L6-v2"``);
- **truncation**: every input is cut to the model's max length (``tokenizer_config.json``'s
  ``model_max_length``, or ``sentence_bert_config.json``'s ``max_seq_length``, never more than
  ``max_position_embeddings``);
- **batching**: ``batch_size`` inputs per forward, padded to the longest of the batch; the padded
  keys are masked, so a result does not depend on the batch it ran in (up to float rounding).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..data.encoding import pad_batch
from ..nn.xp import to_numpy


class PipelineError(ValueError):
    """Bad pipeline input or a folder that cannot serve the task; the message says which."""


def clean_up_spaces(folder) -> bool:
    """``clean_up_tokenization_spaces`` of the folder's ``tokenizer_config.json`` (Hugging Face's default: True)."""
    import json

    path = Path(folder) / "tokenizer_config.json" if folder is not None else None
    if path is None or not path.is_file():
        return True
    return bool(json.loads(path.read_text(encoding="utf-8")).get("clean_up_tokenization_spaces", True))


def load_model(model_class, model, tokenizer=None):
    """``(model, tokenizer, max_length, folder)`` from a folder / known name, or from a model and tokenizer
    given (folder None)."""
    from ..data.tokenizer import Tokenizer
    from ..pretrained import PretrainedError, max_seq_length, model_folder

    if not isinstance(model, (str, Path)):
        if tokenizer is None:
            raise PipelineError("a model object needs its tokenizer: pipeline(task, model=m, tokenizer=t)")
        return model, tokenizer, min(getattr(tokenizer, "model_max_length", None) or 10 ** 9,
                                     model.config.max_position_embeddings), None
    try:
        folder = model_folder(model)
        tok = tokenizer or Tokenizer.from_pretrained(folder)
    except (PretrainedError, ValueError) as e:
        raise PipelineError(str(e)) from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = model_class.from_pretrained(folder)
    missing = [str(w.message) for w in caught if "no weights for" in str(w.message)]
    if missing:                                          # a head nobody trained: its outputs would be noise
        warnings.warn(f"{missing[0]}: this folder was not trained for this task", stacklevel=3)
    if len(tok) != m.config.vocab_size:
        raise PipelineError(f"{folder}: the vocabulary has {len(tok)} tokens but the model's vocab_size is "
                            f"{m.config.vocab_size}")
    return m, tok, max_seq_length(folder, m.config.max_position_embeddings), folder


def as_list(inputs, what: str = "text") -> tuple[list, bool]:
    """``(list of inputs, was_single)``; refuses an empty list and non-strings in one line."""
    single = isinstance(inputs, (str, dict))
    items = [inputs] if single else list(inputs) if isinstance(inputs, (list, tuple)) else None
    if items is None:
        raise PipelineError(f"expected a {what} or a list of them; got {type(inputs).__name__}")
    if not items:
        raise PipelineError(f"got an empty list of {what}s")
    for x in items:
        if not isinstance(x, (str, dict)):
            raise PipelineError(f"every input must be a {what}; got {type(x).__name__}")
    return items, single


def run_batches(model, encodings: list, pad_token_id: int, batch_size: int, outputs) -> list:
    """Forward ``encodings`` ``batch_size`` at a time (in length order: less padding); for each encoding,
    ``outputs(out)`` is a tuple of (B, T, ...) or (B, ...) arrays whose row is cut to that encoding's length
    when it has a T axis. Returns, in the input order, one tuple of NumPy arrays per encoding."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise PipelineError(f"batch_size must be a positive integer; got {batch_size!r}")
    order = np.argsort([len(e.input_ids) for e in encodings], kind="stable")
    results = [None] * len(encodings)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = pad_batch([encodings[i] for i in idx], pad_token_id)
        out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], training=False)
        arrays = [to_numpy(a) for a in outputs(out)]
        T = batch["input_ids"].shape[1]
        for b, i in enumerate(idx):
            n = len(encodings[i].input_ids)
            results[i] = tuple(a[b, :n] if a.ndim >= 2 and a.shape[1] == T else a[b] for a in arrays)
    return results


def label_names(model) -> list[str]:
    names = getattr(model, "label_names", None)
    return list(names) if names else [f"LABEL_{i}" for i in range(model.num_labels)]


def softmax(x: np.ndarray) -> np.ndarray:
    """Over the last axis, in float64 (the scores are compared with Hugging Face's at 1e-5)."""
    from ..nn.layers import softmax_forward

    return softmax_forward(np.asarray(x, dtype=np.float64))[0]


def join_pieces(tokens: list[str]) -> str:
    """Word pieces back to text, as Hugging Face's ``convert_tokens_to_string``: ``##`` glued to the piece before."""
    return " ".join(tokens).replace(" ##", "").strip()
