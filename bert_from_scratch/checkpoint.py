"""Checkpoints in Hugging Face's layout: ``config.json`` + ``model.safetensors``.

Our parameter names *are* Hugging Face's state-dict names, so saving is a copy and loading
is a copy plus a few well-known renames:

- old TensorFlow-era names ``LayerNorm.gamma`` / ``LayerNorm.beta`` -> ``.weight`` / ``.bias``;
- an encoder-only folder (Hugging Face ``BertModel``: names without ``bert.``, e.g.
  all-MiniLM-L6-v2) loads into ``BertForPreTraining`` or the classifier; the heads it lacks
  are initialised, with a warning that says so;
- ``cls.predictions.decoder.weight`` / ``.decoder.bias`` are the tied word embedding and
  ``cls.predictions.bias``: accepted, not stored twice; ``embeddings.position_ids`` is a buffer;
- a pooler is optional, as in Hugging Face (token-classification, QA and masked-LM models have
  none): dropped with a warning when the model has none, initialised with a warning when the
  model needs one and the folder lacks it; ``BertModel`` loads without one when the folder has none;
- bfloat16 weights (NumPy has no such type) are widened to float32 exactly; float16 stays float16
  until it is cast to the model's dtype.

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


#: safetensors dtype codes NumPy reads as they are; BF16 (which NumPy lacks) is widened to float32 by hand
_NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
                 "U8": "u1", "BOOL": "?"}


def _safetensors_header(path: Path):
    """The JSON header of a safetensors file (name -> dtype, shape, data_offsets), or None if unreadable."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= path.stat().st_size - 8:
                return None
            header = json.loads(f.read(n))
        return (header, 8 + n) if isinstance(header, dict) else None
    except (OSError, ValueError):
        return None


def _load_by_hand(path: Path, header: dict, data_start: int) -> dict:
    """Read every tensor with NumPy; bfloat16 becomes float32 exactly (its 16 bits are a float32's top half)."""
    data = path.read_bytes()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"corrupt checkpoint file {path}: bad header entry for {name}") from None
        raw = data[data_start + start:data_start + end]
        if start > end or len(raw) != end - start:
            raise CheckpointError(f"corrupt checkpoint file {path}: tensor {name} runs past the end of the file")
        if code == "BF16":
            value = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif code in _NUMPY_DTYPES:
            value = np.frombuffer(raw, _NUMPY_DTYPES[code])
        else:
            raise CheckpointError(f"{path}: tensor {name} is stored as {code}, which this reader does not support "
                                  f"(float64/32/16, bfloat16 and integers are)")
        if value.size != int(np.prod(shape)):
            raise CheckpointError(f"corrupt checkpoint file {path}: tensor {name} has {value.size} values for "
                                  f"shape {shape}")
        out[name] = value.reshape(shape).copy()
    return out


def load_safetensors(path) -> dict:
    """name -> NumPy array. float16 stays float16; bfloat16 (NumPy has none) is read as float32."""
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing checkpoint file: {path}")
    found = _safetensors_header(path)
    if found is not None:
        codes = {v.get("dtype") for k, v in found[0].items() if k != "__metadata__" and isinstance(v, dict)}
        if codes - set(_NUMPY_DTYPES):             # bfloat16 (or a dtype safetensors.numpy cannot make)
            return _load_by_hand(path, *found)
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
    if getattr(model, "problem_type", None) is not None:
        d["problem_type"] = model.problem_type           # Hugging Face picks the same loss from it
    if getattr(model, "pooling", "cls") != "cls":
        d["classifier_pooling"] = model.pooling           # ours alone: Hugging Face's classifier reads the pooler
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
    # heads of another task are dropped (e.g. MLM/NSP heads when loading into a classifier), and so is a
    # pooler when the model has none (a token-classification, QA or masked-LM model)
    dropped = sorted(n for n in tensors if n not in params and _replaceable(n, prefix))
    unknown = sorted(n for n in tensors if n not in params and n not in dropped)
    if unknown:
        raise CheckpointError(f"{source}: unknown tensor name(s) {', '.join(unknown[:5])}"
                              f"{' ...' if len(unknown) > 5 else ''} — not part of {type(model).__name__}")
    for name in sorted(tensors):
        if name in params and tuple(tensors[name].shape) != tuple(params[name].shape):
            raise CheckpointError(f"{source}: tensor {name} has shape {tuple(tensors[name].shape)} but the model "
                                  f"expects {tuple(params[name].shape)}")
    missing = [n for n in params if n not in tensors]
    missing_core = [n for n in missing if not _replaceable(n, prefix)]
    if missing_core:
        raise CheckpointError(f"{source}: missing tensor(s) {', '.join(missing_core[:5])}"
                              f"{' ...' if len(missing_core) > 5 else ''}")
    if missing:
        heads = sorted({".".join(n.split(".")[:2]) for n in missing})
        warnings.warn(f"{source}: no weights for {', '.join(heads)}: initialised randomly "
                      f"(std {model.config.initializer_range}); train them before use", stacklevel=3)
    if dropped:
        warnings.warn(f"{source}: ignored {len(dropped)} tensor(s) of another head, or a pooler "
                      f"{type(model).__name__} does not have ({dropped[0]}, ...)", stacklevel=3)
    broken = {name: int((~np.isfinite(value)).sum()) for name, value in tensors.items()
              if name in params and np.asarray(value).dtype.kind == "f" and not np.isfinite(value).all()}
    if broken:                                          # never serve (or resume from) NaN/inf weights
        name, count = next(iter(broken.items()))
        raise CheckpointError(f"{source}: {sum(broken.values()):,} non-finite weight value(s) in "
                              f"{len(broken)} tensor(s), e.g. {count:,} in {name}; the training that wrote it had "
                              f"diverged: use an earlier checkpoint")
    xp = model.xp
    for name, value in tensors.items():
        if name in params:
            params[name] = xp.asarray(np.asarray(value, dtype=model.dtype))
    return {"missing": missing, "dropped": dropped}


#: the first name part of the tensors a task head owns: another task's are dropped, missing ones initialised
HEAD_NAMES = ("cls", "classifier", "qa_outputs")


def _replaceable(name: str, prefix: str) -> bool:
    """A task head's tensor, or the pooler's: absent from some checkpoints (Hugging Face's add_pooling_layer=False),
    so it is initialised when missing and dropped when the model has none, as Hugging Face does."""
    return name.split(".")[0] in HEAD_NAMES or name.startswith(prefix + "pooler.")


def _first_architecture(raw: dict) -> str:
    """``architectures[0]`` of a config.json, or "" when it has none (or not a list of names)."""
    archs = raw.get("architectures")
    return archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else ""


def _keys_list(keys) -> str:
    shown = [repr(k) for k in keys[:5]]
    return ", ".join(shown) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")


def _id2label_names(id2label, num_labels: int, path) -> list[str]:
    """``id2label`` of ``path`` as the list of label names for outputs 0..num_labels-1.

    Its keys must be exactly "0" .. str(num_labels - 1); each value a non-empty name (a number is
    taken as its text), all different. Anything else is a :class:`CheckpointError` naming the file.
    """
    if not isinstance(id2label, dict):
        raise CheckpointError(f"{path}: id2label must be an object {{\"0\": name, ...}}; got "
                              f"{type(id2label).__name__}")
    want = [str(i) for i in range(num_labels)]
    missing = [k for k in want if k not in id2label]
    wanted = set(want)
    extra = sorted(str(k) for k in id2label if k not in wanted)
    if missing or extra:
        problems = ([f"missing key(s) {_keys_list(missing)}"] if missing else []) + \
                   ([f"extra key(s) {_keys_list(extra)}"] if extra else [])
        raise CheckpointError(f"{path}: id2label must have exactly the keys \"0\" .. \"{num_labels - 1}\" "
                              f"(num_labels = {num_labels}, the classifier's outputs); {'; '.join(problems)}")
    names = []
    for key in want:
        name = id2label[key]
        if isinstance(name, (int, float)) and not isinstance(name, bool):
            name = str(name)
        if not isinstance(name, str) or not name.strip():
            raise CheckpointError(f"{path}: id2label[{key!r}] must be a non-empty label name; got {name!r}")
        names.append(name)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CheckpointError(f"{path}: id2label names two or more outputs {_keys_list(repeated)}: each label name "
                              f"must be different")
    return names


def from_pretrained(cls, folder, dtype=np.float32, **kwargs):
    """Build ``cls`` from a Hugging Face BERT folder (``config.json`` + ``model.safetensors``).

    Every field of ``config.json`` is checked (:meth:`BertConfig.validate`); a classifier checkpoint's
    ``id2label`` must have exactly the keys "0" .. "K-1" for its K outputs. Problems are a
    :class:`CheckpointError` naming the file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint: it has no {CONFIG_NAME}")
    try:
        config = BertConfig.from_json_file(config_path)
    except ConfigError as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    raw = json.loads(config_path.read_text(encoding="utf-8"))          # a JSON object: from_json_file checked
    tensors = load_safetensors(folder / WEIGHTS_NAME)
    label_names = None
    if "num_labels" in cls.__init__.__code__.co_varnames:
        if "num_labels" not in kwargs:
            if "classifier.weight" in tensors:
                weight = tensors["classifier.weight"]
                if weight.ndim != 2 or weight.shape[0] < 1:
                    raise CheckpointError(f"{folder / WEIGHTS_NAME}: classifier.weight has shape "
                                          f"{tuple(weight.shape)}; a classifier's is (num_labels, hidden_size)")
                kwargs["num_labels"] = int(weight.shape[0])
            elif "num_labels" in raw and _first_architecture(raw).endswith("Classification"):
                n = raw["num_labels"]
                if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                    raise CheckpointError(f"{config_path}: num_labels must be a positive integer; got {n!r}")
                kwargs["num_labels"] = n
        weight = tensors.get("classifier.weight")
        if "id2label" in raw and weight is not None and weight.ndim == 2:
            # the checkpoint's classifier has weight.shape[0] outputs: id2label must name each of them
            label_names = _id2label_names(raw["id2label"], int(weight.shape[0]), config_path)
    accepts = cls.__init__.__code__.co_varnames
    if "problem_type" in accepts and "problem_type" not in kwargs and raw.get("problem_type") is not None:
        kwargs["problem_type"] = raw["problem_type"]
    if "pooling" in accepts and "pooling" not in kwargs and raw.get("classifier_pooling") is not None:
        kwargs["pooling"] = raw["classifier_pooling"]
    if "add_pooling_layer" in accepts and "add_pooling_layer" not in kwargs:
        # an encoder saved without a pooler (from a token-classification or QA model) loads without one
        kwargs["add_pooling_layer"] = any(".pooler." in "." + n for n in tensors)
    try:
        model = cls(config, dtype=dtype, **kwargs)
    except ValueError as e:                 # e.g. num_labels 1 with problem_type single_label_classification
        raise CheckpointError(f"{config_path}: {e}") from None
    load_state_dict(model, tensors, source=str(folder))
    if label_names is None and "id2label" in raw and hasattr(model, "num_labels"):
        try:                        # no trained classifier: id2label describes nothing; used only when it fits
            label_names = _id2label_names(raw["id2label"], model.num_labels, config_path)
        except CheckpointError:
            label_names = None
    if label_names is not None and hasattr(model, "num_labels") and len(label_names) == model.num_labels:
        model.label_names = label_names
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
