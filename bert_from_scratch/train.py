r"""Pretraining loop: masked-LM + next-sentence prediction, with checkpoints that resume bit for bit.

One training step (``B`` sequences of ``T`` tokens, ``N`` labelled positions in the batch):

.. math::
    L = \underbrace{\tfrac1N \textstyle\sum_{(b,t):\,y_{bt}\ne-100} -\log p(y_{bt}\mid x_b)}_{\text{MLM}}
      + \underbrace{\tfrac1B \textstyle\sum_b -\log p(\text{isNext}_b \mid x_b)}_{\text{NSP}},\qquad
    g = \nabla_\theta L \xrightarrow{\ \text{clip } \lVert g\rVert\le 1\ } \text{AdamW}(\eta_s)

with :math:`\eta_s` from :func:`~bert_from_scratch.optim.linear_warmup_decay`.

**Checkpoints** live in ``out_dir/checkpoint`` in Hugging Face's layout, so
``transformers.BertForPreTraining.from_pretrained(out_dir / "checkpoint")`` reads them::

    config.json  model.safetensors  vocab.txt     <- the model (model.save_pretrained) + tokenizer
    optimizer.safetensors                         <- "exp_avg.<name>", "exp_avg_sq.<name>", "step"
    trainer_state.json                            <- step, RNG states, data order, loss history

A checkpoint is written into a temporary folder next to the target and then renamed into place,
so a crash never leaves a half-written one (see :func:`atomic_replace_dir`).

**Bit-for-bit resume.** Everything that decides the next loss is saved: the parameters and the
Adam moments (exact float32 in safetensors), the step (hence the learning rate), the dropout
generator ``model.rng`` and the data-order generator (its state at the start of the current epoch
plus the position in the epoch's permutation). A run interrupted and resumed therefore produces
exactly the same float losses as an uninterrupted one.

**Divergence.** If the loss or the gradient norm becomes NaN/inf, training stops *before* the
bad update, writes no new checkpoint, and returns a :class:`TrainResult` with ``diverged=True``
and a message naming the step; the last good checkpoint stays as it was.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_safetensors, load_state_dict
from .optim import AdamW, clip_grad_norm, linear_warmup_decay
from .xp import get_array_module, to_numpy

CHECKPOINT_DIR = "checkpoint"
OPTIMIZER_NAME = "optimizer.safetensors"
TRAINER_STATE_NAME = "trainer_state.json"
CURVE_NAME = "training_curve.png"
ARRAY_KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_labels")
IGNORE_INDEX = -100
# config.json keys that do not change the computation (or are written by save_pretrained itself)
_CONFIG_KEYS_NOT_COMPARED = {"attention_backend", "architectures", "model_type", "transformers_version",
                             "torch_dtype", "dtype"}


@dataclass
class TrainResult:
    """What :func:`pretrain` returns.

    ``losses``, ``mlm_accuracies``, ``nsp_accuracies``, ``learning_rates``: one entry per training
    step since step 0 (a resumed run includes the history read from the checkpoint).
    ``evals``: one dict per evaluation (``step``, ``loss``, ``mlm_loss``, ``nsp_loss``,
    ``mlm_accuracy``, ``nsp_accuracy``). ``mlm_accuracy`` / ``nsp_accuracy``: the final evaluation
    (None without eval arrays). ``diverged``: training stopped on a NaN/inf, see ``message``.
    """

    step: int
    losses: list = field(default_factory=list)
    mlm_accuracies: list = field(default_factory=list)
    nsp_accuracies: list = field(default_factory=list)
    learning_rates: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    mlm_accuracy: float | None = None
    nsp_accuracy: float | None = None
    nsp_auc: float | None = None
    eval_loss: float | None = None
    diverged: bool = False
    message: str = ""
    checkpoint_dir: Path | None = None
    curve_path: Path | None = None
    tokens_per_second: float = 0.0

    @property
    def exit_status(self) -> int:
        """For a command line: 0 when training finished (or stopped at ``stop_at``), 1 when it diverged."""
        return 1 if self.diverged else 0


# ======================================================================================
# Data: validation, batching with a restorable order, evaluation
# ======================================================================================
def check_arrays(arrays: dict, what: str, vocab_size: int | None = None) -> int:
    """Validate the dict of :func:`pretraining_data.instances_to_arrays`; return the number of sequences N."""
    if not isinstance(arrays, dict):
        raise ValueError(f"{what} must be a dict with keys {', '.join(ARRAY_KEYS)}; got {type(arrays).__name__}")
    missing = [k for k in ARRAY_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{what} is missing key(s) {', '.join(missing)} (expected {', '.join(ARRAY_KEYS)})")
    ids = arrays["input_ids"]
    if getattr(ids, "ndim", None) != 2:
        raise ValueError(f"{what}['input_ids'] must be (N, T); got shape {getattr(ids, 'shape', None)}")
    n, t = ids.shape
    for k in ("token_type_ids", "attention_mask", "labels"):
        if tuple(arrays[k].shape) != (n, t):
            raise ValueError(f"{what}['{k}'] has shape {tuple(arrays[k].shape)}; input_ids has {(n, t)}")
    if tuple(arrays["next_sentence_labels"].shape) != (n,):
        raise ValueError(f"{what}['next_sentence_labels'] has shape {tuple(arrays['next_sentence_labels'].shape)}; "
                         f"expected ({n},)")
    if n == 0:
        raise ValueError(f"{what} holds no sequences")
    if vocab_size is not None:
        lab = arrays["labels"]
        bad = (lab != IGNORE_INDEX) & ((lab < 0) | (lab >= vocab_size))
        if bad.any():
            raise ValueError(f"{what}['labels'] holds ids outside [0, {vocab_size}) other than -100")
    return n


class BatchOrder:
    """Shuffled mini-batches, epoch after epoch, from a seeded generator — and restorable.

    Each epoch draws ``perm = rng.permutation(N)`` and yields ``perm[i*B:(i+1)*B]`` for
    ``i < N // B`` (a last partial batch is dropped so every step sees ``B`` sequences). The state
    is (generator state at the start of the epoch, epoch, position): restoring it and drawing the
    permutation again gives the very same remaining batches.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if batch_size > n:
            raise ValueError(f"batch_size ({batch_size}) is larger than the training set ({n} sequences)")
        self.n, self.batch_size = n, batch_size
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self.position = 0                          # batches already taken from this epoch
        self._epoch_start_state = self.rng.bit_generator.state
        self._perm = self.rng.permutation(n)       # (N,)

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size

    def next(self) -> np.ndarray:
        """Indices (B,) of the next batch."""
        if self.position == self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self._epoch_start_state = self.rng.bit_generator.state
            self._perm = self.rng.permutation(self.n)
        idx = self._perm[self.position * self.batch_size:(self.position + 1) * self.batch_size]
        self.position += 1
        return idx

    def state(self) -> dict:
        return {"epoch_start_rng_state": self._epoch_start_state, "epoch": self.epoch, "position": self.position,
                "n": self.n, "batch_size": self.batch_size}

    def load_state(self, state: dict) -> None:
        if state["n"] != self.n or state["batch_size"] != self.batch_size:
            raise CheckpointError(f"the checkpoint was trained on {state['n']} sequences in batches of "
                                  f"{state['batch_size']}; this run has {self.n} in batches of {self.batch_size}: "
                                  f"the batch order cannot be restored")
        self.rng.bit_generator.state = state["epoch_start_rng_state"]
        self._epoch_start_state = self.rng.bit_generator.state
        self._perm = self.rng.permutation(self.n)
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def take_batch(arrays: dict, idx, xp) -> dict:
    """Rows ``idx`` of every array, on the model's device: dict of (B, T) / (B,) arrays."""
    return {k: xp.asarray(arrays[k][idx]) for k in ARRAY_KEYS}


def batch_accuracies(out, batch: dict) -> tuple[float, int, float, int]:
    """(MLM correct, MLM count, NSP correct, NSP count) of one forward with labels.

    ``out.prediction_logits`` is (N, V) over the labelled positions in the row-major order of
    ``nonzero(labels != -100)`` — the same order as ``labels[labels != -100]``.
    """
    xp = get_array_module(out.prediction_logits)
    labels = batch["labels"]
    target = labels[labels != IGNORE_INDEX]                                     # (N,)
    mlm_correct = int((xp.argmax(out.prediction_logits, axis=-1) == target).sum())
    nsp_correct = int((xp.argmax(out.seq_relationship_logits, axis=-1) == batch["next_sentence_labels"]).sum())
    return mlm_correct, int(target.shape[0]), nsp_correct, int(labels.shape[0])


def evaluate(model, arrays: dict, batch_size: int = 32) -> dict:
    """MLM accuracy over all labelled positions and NSP accuracy over all sequences of ``arrays``.

    Runs in order (no shuffling, no dropout); losses are averaged per labelled position (MLM) and
    per sequence (NSP), so the result does not depend on ``batch_size``.
    """
    n = check_arrays(arrays, "eval arrays", model.config.vocab_size)
    xp = model.xp
    mlm_correct = mlm_count = nsp_correct = 0
    mlm_loss_sum = nsp_loss_sum = 0.0
    nsp_scores = []                                    # logit margin for "random next", per sequence
    for start in range(0, n, batch_size):
        batch = take_batch(arrays, slice(start, start + batch_size), xp)
        out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                            labels=batch["labels"], next_sentence_label=batch["next_sentence_labels"],
                            training=False)
        mc, mn, nc, nn = batch_accuracies(out, batch)
        mlm_correct, mlm_count, nsp_correct = mlm_correct + mc, mlm_count + mn, nsp_correct + nc
        if mn:
            mlm_loss_sum += out.mlm_loss * mn
        nsp_loss_sum += out.nsp_loss * nn
        logits = out.seq_relationship_logits
        nsp_scores.append(to_numpy(logits[:, 1] - logits[:, 0]))
    mlm_loss = mlm_loss_sum / mlm_count if mlm_count else float("nan")
    nsp_loss = nsp_loss_sum / n
    return {"loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
            "mlm_accuracy": mlm_correct / mlm_count if mlm_count else float("nan"),
            "nsp_accuracy": nsp_correct / n,
            "nsp_auc": roc_auc(np.concatenate(nsp_scores), to_numpy(arrays["next_sentence_labels"][:n]))}


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve: the probability that a random positive (label 1) scores above a random
    negative, ties counting one half (the Mann-Whitney U statistic over n_pos * n_neg).

    NSP's held-out accuracy has to be read against the majority class (the recipe makes more random-next
    pairs than true ones); the AUC does not depend on the class balance or on a threshold: 0.5 is no
    signal whatever the balance, 1.0 a perfect ranking. NaN when one class is missing."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    n_pos = int((labels == 1).sum())
    n_neg = int(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks (1-based) over runs of tied scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    u = ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


# ======================================================================================
# Checkpoints
# ======================================================================================
def check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and write/remove a probe file there, or raise a clear ValueError now."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write_test_{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"output directory {out_dir} is not writable ({e.strerror or e}); "
                         f"choose another --out") from None


def atomic_replace_dir(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` at ``target``, never leaving ``target`` half-written.

    POSIX has no atomic swap of two non-empty folders, so: rename the old checkpoint aside
    (``.<name>.old``), rename the new one in, delete the old. A crash between the two renames
    leaves the old complete checkpoint at ``.<name>.old``, which :func:`find_checkpoint` uses.
    """
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)                     # leftover of a swap that finished but was not cleaned up
        os.replace(target, old)
    os.replace(tmp, target)                        # (if target was missing, a resumed .old stays until now)
    if old.exists():
        shutil.rmtree(old)


def find_checkpoint(path: Path) -> Path:
    """The checkpoint folder to resume from: ``path`` itself, ``path/checkpoint``, or its ``.old`` copy."""
    path = Path(path)
    for candidate in (path, path / CHECKPOINT_DIR, path / f".{CHECKPOINT_DIR}.old"):
        if (candidate / TRAINER_STATE_NAME).is_file():
            return candidate
    raise CheckpointError(f"{path} is not a training checkpoint: no {TRAINER_STATE_NAME} in it or in "
                          f"{path / CHECKPOINT_DIR}")


def save_checkpoint(out_dir: Path, model, optimizer: AdamW, trainer_state: dict, tokenizer=None) -> Path:
    """Write ``out_dir/checkpoint`` atomically; return its path."""
    from safetensors.numpy import save_file

    target = out_dir / CHECKPOINT_DIR
    tmp = out_dir / f".{CHECKPOINT_DIR}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        model.save_pretrained(tmp)                                    # config.json + model.safetensors
        if tokenizer is not None:
            tokenizer.save_vocab(tmp / "vocab.txt")
        save_file(optimizer.state_dict(), str(tmp / OPTIMIZER_NAME), metadata={"format": "np"})
        # trainer_state.json last: a folder with it is complete (json floats round-trip exactly)
        (tmp / TRAINER_STATE_NAME).write_text(json.dumps(trainer_state, indent=1) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)                        # the previous checkpoint is untouched
        raise
    atomic_replace_dir(tmp, target)
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


# ======================================================================================
# The loop
# ======================================================================================
def pretrain(model, train_arrays: dict, eval_arrays: dict | None, out_dir, steps: int, batch_size: int = 32,
             lr: float = 1e-4, warmup: int = 0, seed: int = 0, resume=False, *, tokenizer=None,
             log: Callable[[str], None] | None = None, weight_decay: float = 0.01, max_grad_norm: float = 1.0,
             eval_every: int | None = None, save_every: int | None = None, eval_batch_size: int | None = None,
             stop_at: int | None = None, progress: bool = True, plot: bool = True) -> TrainResult:
    """Pretrain ``model`` (a :class:`~bert_from_scratch.model.BertForPreTraining`) with MLM + NSP.

    Parameters
    ----------
    model : BertForPreTraining, trained in place (on CuPy too: batches follow the model's arrays).
    train_arrays, eval_arrays : dicts from ``pretraining_data.instances_to_arrays``
        (``input_ids, token_type_ids, attention_mask, labels`` (N, T) with -100 = ignore,
        ``next_sentence_labels`` (N,)). ``eval_arrays`` may be None (no evaluation).
    out_dir : folder for ``checkpoint/`` and ``training_curve.png``; checked writable before training.
    steps : total number of optimizer steps (also the length of the lr schedule).
    batch_size, lr, warmup, seed : sequences per step, peak lr, warmup steps, data-order seed.
    resume : False, True (from ``out_dir/checkpoint``) or a checkpoint folder. Continues bit for bit.
    tokenizer : optional, anything with ``save_vocab(path)``; writes ``vocab.txt`` into checkpoints.
    log : callable for messages (default: ``tqdm.write``).
    eval_every, save_every : in steps (default: ``max(1, steps // 10)``); both also happen at the end.
    stop_at : stop (with an evaluation and a checkpoint) after this many total steps, to split a run into
        sessions; the lr schedule still spans ``steps``.
    progress, plot : show a tqdm bar; save the loss/accuracy curve as PNG at the end.
    """
    from tqdm.auto import tqdm

    log = log or tqdm.write
    if not isinstance(steps, (int, np.integer)) or steps <= 0:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if not 0 <= warmup <= steps:
        raise ValueError(f"warmup must be in [0, steps={steps}]; got {warmup}")
    if not lr > 0:
        raise ValueError(f"lr must be positive; got {lr}")
    n_train = check_arrays(train_arrays, "train arrays", model.config.vocab_size)
    if batch_size > n_train:
        raise ValueError(f"batch_size ({batch_size}) is larger than the training set ({n_train} sequences)")
    if eval_arrays is not None:
        check_arrays(eval_arrays, "eval arrays", model.config.vocab_size)
    if tokenizer is not None and len(tokenizer) != model.config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}")
    eval_every = eval_every or max(1, steps // 10)
    save_every = save_every or max(1, steps // 10)
    eval_batch_size = eval_batch_size or batch_size
    stop_at = steps if stop_at is None else min(int(stop_at), steps)
    out_dir = Path(out_dir)
    check_writable(out_dir)                                    # fail now, not after an hour of training

    order = BatchOrder(n_train, batch_size, seed)
    history = {"loss": [], "mlm_accuracy": [], "nsp_accuracy": [], "lr": [], "grad_norm": [], "evals": []}
    step = 0
    optimizer_state = None
    if resume:
        folder = find_checkpoint(out_dir if resume is True else Path(resume))
        state, optimizer_state = load_checkpoint(folder, model)
        if state.get("seed") != seed:
            raise CheckpointError(f"checkpoint {folder} used data-order seed {state.get('seed')}; this run asks for "
                                  f"{seed}: the batch order would not continue")
        order.load_state(state["data_order"])
        model.rng.bit_generator.state = state["model_rng_state"]
        history = state["history"]
        step = int(state["step"])
        for key, value in (("steps", steps), ("lr", lr), ("warmup", warmup)):
            if key in state and state[key] != value:
                log(f"note: resuming with {key}={value} (checkpoint had {state[key]}): the run will not "
                    f"match an uninterrupted one")
        log(f"resumed from {folder} at step {step}")
    elif (out_dir / CHECKPOINT_DIR).exists():
        log(f"note: {out_dir / CHECKPOINT_DIR} exists and will be replaced (pass resume=True to continue it)")

    optimizer = AdamW(model.params, lr=lr, weight_decay=weight_decay)      # after loading: same arrays
    if optimizer_state is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except ValueError as e:
            raise CheckpointError(f"{OPTIMIZER_NAME} does not fit the model: {e}") from None
        if optimizer.step_count != step:
            raise CheckpointError(f"{OPTIMIZER_NAME} is at step {optimizer.step_count} but "
                                  f"{TRAINER_STATE_NAME} says {step}")

    def trainer_state() -> dict:
        return {"step": step, "steps": steps, "lr": lr, "warmup": warmup, "batch_size": batch_size, "seed": seed,
                "model_rng_state": model.rng.bit_generator.state, "data_order": order.state(),
                "history": history}

    def run_eval():
        if eval_arrays is None:
            return None
        ev = {"step": step, **evaluate(model, eval_arrays, eval_batch_size)}
        history["evals"].append(ev)
        log(f"step {step}: eval loss {ev['loss']:.4f}  MLM acc {ev['mlm_accuracy']:.4f}  "
            f"NSP acc {ev['nsp_accuracy']:.4f}")
        return ev

    xp = model.xp
    result = TrainResult(step=step)
    last_saved = step if resume else None
    tokens_seen, time_spent = 0, 0.0
    bar = tqdm(total=steps, initial=step, disable=not progress, desc="pretrain", unit="step", dynamic_ncols=True)
    try:
        while step < stop_at:
            t0 = time.perf_counter()
            batch = take_batch(train_arrays, order.next(), xp)
            out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                                labels=batch["labels"], next_sentence_label=batch["next_sentence_labels"],
                                training=True)
            loss = out.loss
            grad_norm = float("nan")
            if math.isfinite(loss):
                grads = model.backward()
                grad_norm = clip_grad_norm(grads, max_grad_norm)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm} (loss {loss})"
                kept = (f"the last good checkpoint ({out_dir / CHECKPOINT_DIR}, step {last_saved}) is kept"
                        if last_saved is not None else "no checkpoint had been written yet")
                result.diverged = True
                result.message = (f"training diverged at step {step}: {what} is not finite; stopped before "
                                  f"updating the weights; {kept}. Lower the learning rate or raise the warmup.")
                log(result.message)
                break
            step_lr = linear_warmup_decay(step, steps, warmup, lr)
            optimizer.step(grads, lr=step_lr)
            del grads
            step += 1
            mc, mn, nc, nn = batch_accuracies(out, batch)
            history["loss"].append(loss)
            history["mlm_accuracy"].append(mc / mn if mn else float("nan"))
            history["nsp_accuracy"].append(nc / nn)
            history["lr"].append(step_lr)
            history["grad_norm"].append(grad_norm)
            tokens_seen += int(batch["attention_mask"].sum())
            time_spent += time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", mlm=f"{history['mlm_accuracy'][-1]:.3f}",
                            nsp=f"{history['nsp_accuracy'][-1]:.2f}", tok_s=f"{tokens_seen / time_spent:.0f}")
            if step % eval_every == 0 or step == stop_at:
                run_eval()
            if step % save_every == 0 or step == stop_at:
                save_checkpoint(out_dir, model, optimizer, trainer_state(), tokenizer)
                last_saved = step
    finally:
        bar.close()

    if not history["evals"] or history["evals"][-1]["step"] != step:
        if not result.diverged:
            run_eval()
    result.step = step
    result.losses = list(history["loss"])
    result.mlm_accuracies = list(history["mlm_accuracy"])
    result.nsp_accuracies = list(history["nsp_accuracy"])
    result.learning_rates = list(history["lr"])
    result.evals = list(history["evals"])
    if history["evals"]:
        last = history["evals"][-1]
        result.mlm_accuracy, result.nsp_accuracy, result.eval_loss = (last["mlm_accuracy"], last["nsp_accuracy"],
                                                                      last["loss"])
        result.nsp_auc = last.get("nsp_auc")
    result.checkpoint_dir = out_dir / CHECKPOINT_DIR if last_saved is not None else None
    result.tokens_per_second = tokens_seen / time_spent if time_spent else 0.0
    if plot and history["loss"]:
        result.curve_path = plot_curves(history, out_dir / CURVE_NAME)
    return result


# ======================================================================================
# The picture
# ======================================================================================
def _moving_average(values, window: int) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if len(v) < window or window <= 1:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    head = c[1:window] / np.arange(1, window)                  # growing window at the start
    return np.concatenate([head, (c[window:] - c[:-window]) / window])


def plot_curves(history: dict, path: Path) -> Path:
    """Loss (left) and MLM/NSP accuracy (right) per step, eval points on top; saved as PNG.

    Uses matplotlib's Agg canvas directly (no pyplot), so it never changes the backend of a
    notebook that imports this module.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = np.arange(1, len(history["loss"]) + 1)
    window = max(1, len(steps) // 50)
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(steps, history["loss"], color="tab:blue", alpha=0.3, lw=0.8, label="train (per step)")
    ax_loss.plot(steps, _moving_average(history["loss"], window), color="tab:blue", lw=1.5,
                 label=f"train (mean of {window})")
    ax_acc.plot(steps, _moving_average(history["mlm_accuracy"], window), color="tab:orange", label="train MLM")
    ax_acc.plot(steps, _moving_average(history["nsp_accuracy"], window), color="tab:green", label="train NSP")
    if history["evals"]:
        ev_steps = [e["step"] for e in history["evals"]]
        ax_loss.plot(ev_steps, [e["loss"] for e in history["evals"]], "o-", color="tab:red", ms=4, label="eval")
        ax_acc.plot(ev_steps, [e["mlm_accuracy"] for e in history["evals"]], "o--", color="tab:orange", ms=4,
                    label="eval MLM")
        ax_acc.plot(ev_steps, [e["nsp_accuracy"] for e in history["evals"]], "s--", color="tab:green", ms=4,
                    label="eval NSP")
    ax_loss.set(xlabel="step", ylabel="loss (MLM + NSP)", title="Pretraining loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="MLM and NSP accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def save_figure_atomic(fig, path) -> Path:
    """Write a matplotlib figure as PNG through a temporary file + rename (never half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path
