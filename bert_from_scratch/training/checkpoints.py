"""Training checkpoints: the model, the optimizer and everything else a bit-for-bit resume needs.

``out_dir/checkpoint`` in Hugging Face's layout, so
``transformers.BertForPreTraining.from_pretrained(out_dir / "checkpoint")`` reads it::

    config.json  model.safetensors                <- the model (model.save_pretrained)
    vocab.txt  tokenizer_config.json              <- the tokenizer (tokenizer.save_pretrained)
    optimizer.safetensors                         <- "exp_avg.<name>", "exp_avg_sq.<name>", "step"
    trainer_state.json                            <- step, RNG states, data order, loss history

The folder is built in a temporary folder next to the target and swapped in
(:func:`~bert_from_scratch.files.atomic_dir`), so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import CheckpointError, load_safetensors, load_state_dict, resolve_model_folder
from ..constants import (CHECKPOINT_DIR, CONFIG_NAME, OPTIMIZER_NAME, TRAINER_STATE_NAME,
                         WEIGHTS_NAME)
from ..files import atomic_dir
from .optim import AdamW

# config.json keys that do not change the computation (or are written by save_pretrained itself)
_CONFIG_KEYS_NOT_COMPARED = {"architectures", "model_type", "transformers_version", "torch_dtype", "dtype"}


def find_checkpoint(path) -> Path:
    """The training checkpoint to resume from: ``path`` itself, ``path/checkpoint``, or its ``.old`` copy."""
    return resolve_model_folder(path, need=TRAINER_STATE_NAME, what="a training checkpoint")


def save_checkpoint(out_dir: Path, model, optimizer: AdamW, trainer_state: dict, tokenizer=None) -> Path:
    """Write ``out_dir/checkpoint`` atomically; return its path."""
    from safetensors.numpy import save_file

    target = Path(out_dir) / CHECKPOINT_DIR
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)                                    # config.json + model.safetensors
        if tokenizer is not None:                                     # vocab.txt + tokenizer_config.json
            tokenizer.save_pretrained(tmp, model_max_length=model.config.max_position_embeddings)
        save_file(optimizer.state_dict(), str(tmp / OPTIMIZER_NAME), metadata={"format": "np"})
        # trainer_state.json last: a folder with it is complete (json floats round-trip exactly)
        (tmp / TRAINER_STATE_NAME).write_text(json.dumps(trainer_state, indent=1) + "\n", encoding="utf-8")
    return target


def _check_config_matches(model, folder: Path) -> None:
    try:
        saved = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / CONFIG_NAME} cannot be read: {e}") from None
    ours = model.config.to_dict()
    differing = [f"{k}: checkpoint {saved[k]!r} vs model {ours[k]!r}" for k in ours
                 if k in saved and k not in _CONFIG_KEYS_NOT_COMPARED and saved[k] != ours[k]]
    if differing:
        raise CheckpointError(f"checkpoint {folder} was trained with another config — " + "; ".join(differing))


def load_checkpoint(folder: Path, model) -> tuple[dict, dict]:
    """Check ``folder`` against ``model`` and copy its weights in; return (trainer_state, optimizer_state)."""
    for name in (CONFIG_NAME, WEIGHTS_NAME, OPTIMIZER_NAME, TRAINER_STATE_NAME):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder} is not a complete training checkpoint: {name} is missing")
    _check_config_matches(model, folder)
    try:
        state = json.loads((folder / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{folder / TRAINER_STATE_NAME} is corrupt: {e}") from None
    for key in ("step", "model_rng_state", "data_order", "history"):
        if key not in state:
            raise CheckpointError(f"{folder / TRAINER_STATE_NAME} has no {key!r}: not written by this trainer")
    load_state_dict(model, load_safetensors(folder / WEIGHTS_NAME), source=str(folder))
    optimizer_state = load_safetensors(folder / OPTIMIZER_NAME)
    return state, optimizer_state
