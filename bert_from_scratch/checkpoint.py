"""Checkpoints in Hugging Face's layout: ``config.json`` + ``model.safetensors``.

Our parameter names *are* Hugging Face's state-dict names, so saving is a copy and loading
is a copy plus a few well-known renames:

- old TensorFlow-era names ``LayerNorm.gamma`` / ``LayerNorm.beta`` -> ``.weight`` / ``.bias``;
- an encoder-only folder (Hugging Face ``BertModel``: names without ``bert.``, e.g.
  all-MiniLM-L6-v2) loads into ``BertForPreTraining`` or the classifier; the heads it lacks
  are initialised, with a warning that says so;
- ``cls.predictions.decoder.weight`` / ``.decoder.bias`` are the tied word embedding and
  ``cls.predictions.bias``: accepted, not stored twice; ``embeddings.position_ids`` is a buffer.

Every file is written atomically (temporary file + ``os.replace``), so a crash never leaves a
half-written checkpoint. Errors name the file, the tensor and the shapes involved.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from .config import BertConfig, ConfigError
from .constants import BEST_DIR, CHECKPOINT_DIR, CONFIG_NAME, WEIGHTS_NAME
from .files import atomic_path, atomic_write
from .nn.xp import to_numpy


class CheckpointError(ValueError):
    """A missing, corrupt or incompatible checkpoint."""


def atomic_save_safetensors(tensors: dict, path, metadata=None):
    """Host copies of ``tensors`` to a safetensors file, atomically."""
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(to_numpy(v)) for k, v in tensors.items()}, str(tmp),
                  metadata=metadata or {"format": "pt"})   # "pt": transformers refuses other formats


def load_safetensors(path) -> dict:
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing checkpoint file: {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a truncated or garbled file
        raise CheckpointError(f"corrupt checkpoint file {path}: {e}") from None


def save_pretrained(model, folder):
    """Write ``config.json`` and ``model.safetensors`` into ``folder`` (created if needed)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create checkpoint folder {folder}: {e.strerror}") from None
    cfg = model.config
    d = {"architectures": [type(model).__name__], "model_type": "bert", **cfg.to_dict()}
    if hasattr(model, "num_labels"):
        d["num_labels"] = model.num_labels
        d["id2label"] = {str(i): name for i, name in enumerate(getattr(model, "label_names", None)
                                                                or [f"LABEL_{i}" for i in range(model.num_labels)])}
        d["label2id"] = {name: int(i) for i, name in d["id2label"].items()}
    atomic_write(folder / CONFIG_NAME, json.dumps(d, indent=2) + "\n")
    atomic_save_safetensors(model.params, folder / WEIGHTS_NAME)


def _normalise_names(tensors: dict, want_prefix: str) -> dict:
    """Rename a checkpoint's tensors to the names our model uses (see the module docstring)."""
    out = {}
    for name, value in tensors.items():
        if name.endswith("position_ids"):
            continue                                              # a buffer (0..511), not a parameter
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        is_encoder = name.split(".")[0] in ("embeddings", "encoder", "pooler")
        if want_prefix == "bert." and is_encoder:
            name = "bert." + name                                 # an encoder-only (BertModel) checkpoint
        elif want_prefix == "" and name.startswith("bert."):
            name = name[len("bert."):]                            # a full checkpoint into a BertModel
        out[name] = value
    return out


def load_state_dict(model, tensors: dict, source="checkpoint"):
    """Copy ``tensors`` into ``model.params`` (cast to the model's dtype), with clear errors."""
    prefix = model.base_prefix
    tensors = _normalise_names(tensors, prefix)
    params = model.params
    emb = prefix + "embeddings.word_embeddings.weight"
    # tied aliases: the decoder weight is the word embedding, the decoder bias is cls.predictions.bias
    dec_w = tensors.pop("cls.predictions.decoder.weight", None)
    dec_b = tensors.pop("cls.predictions.decoder.bias", None)
    if dec_b is not None and "cls.predictions.bias" not in tensors:
        tensors["cls.predictions.bias"] = dec_b
    if dec_w is not None and emb in tensors and dec_w.shape == tensors[emb].shape \
            and not np.array_equal(dec_w, tensors[emb]) and "cls.predictions.bias" in params:
        warnings.warn(f"{source}: cls.predictions.decoder.weight differs from the word embeddings; this BERT ties "
                      f"them and uses the word embeddings", stacklevel=3)
    # heads of another task are dropped (e.g. MLM/NSP heads when loading into a classifier)
    dropped = sorted(n for n in tensors if n not in params and n.split(".")[0] in ("cls", "classifier"))
    unknown = sorted(n for n in tensors if n not in params and n not in dropped)
    if unknown:
        raise CheckpointError(f"{source}: unknown tensor name(s) {', '.join(unknown[:5])}"
                              f"{' ...' if len(unknown) > 5 else ''} — not part of {type(model).__name__}")
    for name in sorted(tensors):
        if name in params and tuple(tensors[name].shape) != tuple(params[name].shape):
            raise CheckpointError(f"{source}: tensor {name} has shape {tuple(tensors[name].shape)} but the model "
                                  f"expects {tuple(params[name].shape)}")
    missing = [n for n in params if n not in tensors]
    missing_core = [n for n in missing if n.split(".")[0] not in ("cls", "classifier")]
    if missing_core:
        raise CheckpointError(f"{source}: missing tensor(s) {', '.join(missing_core[:5])}"
                              f"{' ...' if len(missing_core) > 5 else ''}")
    if missing:
        heads = sorted({".".join(n.split(".")[:2]) for n in missing})
        warnings.warn(f"{source}: no weights for {', '.join(heads)}: initialised randomly "
                      f"(std {model.config.initializer_range}); train them before use", stacklevel=3)
    if dropped:
        warnings.warn(f"{source}: ignored {len(dropped)} tensor(s) of another head ({dropped[0]}, ...)",
                      stacklevel=3)
    xp = model.xp
    for name, value in tensors.items():
        if name in params:
            params[name] = xp.asarray(np.asarray(value, dtype=model.dtype))
    return {"missing": missing, "dropped": dropped}


def from_pretrained(cls, folder, dtype=np.float32, **kwargs):
    """Build ``cls`` from a Hugging Face BERT folder (``config.json`` + ``model.safetensors``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointError(f"{folder} is not a checkpoint: it has no {CONFIG_NAME}")
    try:
        config = BertConfig.from_json_file(folder / CONFIG_NAME)
    except ConfigError as e:
        raise CheckpointError(f"{folder / CONFIG_NAME}: {e}") from None
    tensors = load_safetensors(folder / WEIGHTS_NAME)
    if "num_labels" in cls.__init__.__code__.co_varnames and "num_labels" not in kwargs:
        raw = json.loads((folder / CONFIG_NAME).read_text())
        if "classifier.weight" in tensors:
            kwargs["num_labels"] = int(tensors["classifier.weight"].shape[0])
        elif isinstance(raw.get("num_labels"), int) and raw.get("architectures", [""])[0].endswith("Classification"):
            kwargs["num_labels"] = raw["num_labels"]
    model = cls(config, dtype=dtype, **kwargs)
    load_state_dict(model, tensors, source=str(folder))
    raw = json.loads((folder / CONFIG_NAME).read_text())
    if "id2label" in raw and hasattr(model, "num_labels") and len(raw["id2label"]) == model.num_labels:
        model.label_names = [raw["id2label"][str(i)] for i in range(model.num_labels)]
    return model


def resolve_model_folder(path, need: str = CONFIG_NAME, what: str = "a model") -> Path:
    """The folder holding ``need`` for ``path``: every command and job resolves run folders here.

    ``path`` may be a model folder itself, or a run folder holding ``checkpoint/`` (pretraining) or
    ``best/`` (fine-tuning). A kill between the two renames of a folder swap
    (:func:`~bert_from_scratch.files.replace_dir`) leaves only ``.checkpoint.old`` / ``.best.old``,
    a complete copy: it is found too.
    """
    path = Path(path).expanduser()
    inside = [path / name for name in (CHECKPOINT_DIR, BEST_DIR)]
    for candidate in [path, *inside, *(p.with_name(f".{p.name}.old") for p in inside)]:
        if (candidate / need).is_file():
            return candidate
    if not path.exists():
        raise CheckpointError(f"checkpoint folder not found: {path}")
    raise CheckpointError(f"{path} is not {what}: no {need} in it, nor in its {CHECKPOINT_DIR}/ or {BEST_DIR}/")
