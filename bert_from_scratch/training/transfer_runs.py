"""A finished fine-tuning of the transfer table, kept on disk, so that ``transfer --resume`` does not run it again.

A table of all the labels is an hour of fine-tunings (63 of them); a larger grid or ten seeds, several hours. Each
fine-tuning, once scored, leaves ``RUN_RECORD`` in its own folder (``OUT/<row>/lr<rate>-seed<seed>/``), written
atomically: its dev and test accuracy, its right or wrong per test review, and the **settings** that made it:

- ``digest``: sha256 of what the run started from and of the data: a checkpoint's files (its weights included),
  or for a random-init twin the config and vocabulary it copies; and every example of the train, dev and test
  splits. A checkpoint retrained into the same folder, or another dataset, is another run.
- the row's starting point, the learning rate, the seed, frozen word embeddings or not, and the protocol's settings
  of one run (epochs, patience, batch size, length, training subset, classifier-first epochs, and the pooling
  when it is not the pooler's).

The grid and the seeds are not part of a run's settings: ``--resume`` with more ``--seeds`` or another ``--lrs``
runs only the fine-tunings that are new. A record whose settings differ from the run asked for is refused in one
line naming the difference (a table is never made of runs of two protocols). A run killed before it was scored
left no record, so it runs again.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..files import atomic_write
from .run_folder import RunFolderError

RUN_RECORD = "transfer_run.json"
# the protocol's fields that change what one fine-tuning does (the rest say which runs the table holds)
RUN_FIELDS = ("epochs", "patience", "batch_size", "max_length", "max_train_examples", "classifier_first")


def start_and_data_digest(init: str, like: str | None, data) -> str:
    """sha256 (hex) of a row's starting point and of ``data``'s three splits."""
    from ..checkpoint import resolve_model_folder
    from ..constants import CONFIG_NAME, VOCAB_NAME
    from ..pretrained import model_folder
    from .classification_models import MINILM, model_name

    source = model_name((like or MINILM) if init == "random" else init)
    folder = model_folder(MINILM) if source == MINILM else resolve_model_folder(source)
    if init == "random":                                 # a twin reads only these two of its model's files
        files = [folder / CONFIG_NAME, folder / VOCAB_NAME]
    else:
        files = sorted(f for f in folder.iterdir() if f.is_file())
    h = hashlib.sha256(init.encode() if init in ("random", "minilm") else b"checkpoint")
    for f in files:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    splits = [[asdict(e) for e in split] for split in (data.train, data.dev, data.test)]
    h.update(json.dumps([getattr(data, "name", ""), splits], sort_keys=True).encode())
    return h.hexdigest()


def run_settings(digest: str, init: str, like, lr: float, seed: int, frozen: bool, protocol) -> dict:
    """What decides one fine-tuning's result (module docstring)."""
    p = asdict(protocol)
    pooling = {} if p.get("pooling", "cls") == "cls" else {"pooling": p["pooling"]}   # records before it had "cls"
    return {"digest": digest, "init": str(init), "like": None if like is None else str(like), "lr": lr,
            "seed": seed, "frozen": frozen, **{k: p[k] for k in RUN_FIELDS}, **pooling}


def write_run(folder: Path, settings: dict, dev: float, test: float, correct: np.ndarray) -> None:
    """Keep a scored run: a diverged one (dev -inf) keeps ``null`` accuracies."""
    record = {"settings": settings, "dev": None if math.isinf(dev) else dev, "test": None if math.isnan(test) else test,
              "correct": "".join("1" if c else "0" for c in correct)}
    atomic_write(folder / RUN_RECORD, json.dumps(record, indent=1))


def kept_run(folder: Path, settings: dict) -> tuple[float, float, np.ndarray] | None:
    """``(dev, test, correct)`` of the run kept in ``folder``, or None if none was kept there.

    Raises :class:`RunFolderError` (one line) if the kept run was made with other settings."""
    path = folder / RUN_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        kept, correct = record["settings"], record["correct"]
    except (ValueError, KeyError, TypeError):
        raise RunFolderError(f"{path} is not a fine-tuning record of this program; move it away or use "
                             f"another --out") from None
    if kept != settings:
        differ = ["the starting point's files or the dataset" if k == "digest" else f"{k} {kept.get(k)!r} there, "
                  f"{settings[k]!r} now" for k in settings if kept.get(k) != settings[k]]
        raise RunFolderError(f"{folder} holds a fine-tuning made with other settings ({'; '.join(differ)}): "
                             f"--overwrite to redo the table, or choose another --out")
    dev = -math.inf if record["dev"] is None else float(record["dev"])
    test = math.nan if record["test"] is None else float(record["test"])
    return dev, test, np.array([c == "1" for c in correct], dtype=np.float64)


def kept_runs(out: Path) -> list[Path]:
    """Every run record under a table's folder."""
    return sorted(Path(out).glob(f"*/*/{RUN_RECORD}")) if Path(out).is_dir() else []
