r"""Pretraining loop: masked-LM + next-sentence prediction, with checkpoints that resume bit for bit.

One training step (``B`` sequences of ``T`` tokens, ``N`` labelled positions in the batch):

.. math::
    L = \underbrace{\tfrac1N \textstyle\sum_{(b,t):\,y_{bt}\ne-100} -\log p(y_{bt}\mid x_b)}_{\text{MLM}}
      + \underbrace{\tfrac1B \textstyle\sum_b -\log p(\text{isNext}_b \mid x_b)}_{\text{NSP}},\qquad
    g = \nabla_\theta L \xrightarrow{\ \text{clip } \lVert g\rVert\le 1\ } \text{AdamW}(\eta_s)

with :math:`\eta_s` from :func:`~bert_from_scratch.training.optim.linear_warmup_decay`.

The steps run in the one training loop (:mod:`~bert_from_scratch.training.loop`); this module
describes the job: its data (shuffled batches in a restorable order), its schedule, its metrics
(MLM and NSP accuracy, held-out evaluation) and its checkpoints (``out_dir/checkpoint`` in Hugging
Face's layout, see :mod:`~bert_from_scratch.training.checkpoints`).

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

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..checkpoint import CheckpointError
from ..constants import CHECKPOINT_DIR, CURVE_NAME, IGNORE_INDEX, OPTIMIZER_NAME, TRAINER_STATE_NAME
from ..distributed.job import DataParallel
from ..nn.xp import get_array_module, to_numpy
from .checkpoints import find_checkpoint, load_checkpoint, save_checkpoint
from .loop import LoopState, run_loop
from .metrics import roc_auc
from .optim import AdamW, linear_warmup_decay
from .batch_order import BatchOrder
from .run_folder import refuse_to_clobber

ARRAY_KEYS = ("input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_labels")
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


# ======================================================================================
# The loop
# ======================================================================================
def _check_arguments(model, train_arrays, eval_arrays, steps, batch_size, lr, warmup, tokenizer) -> int:
    """Refuse bad options and data before any work, in one line each; return the number of training sequences."""
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
    return n_train


def _restore(folder: Path, model, order: BatchOrder, run: dict, log) -> tuple[int, dict, dict]:
    """Load a training checkpoint into ``model`` (weights, dropout RNG) and ``order``; return
    (step, history, optimizer state). ``run``: this run's seed, steps, lr, warmup, objective and frozen names."""
    state, optimizer_state = load_checkpoint(folder, model)
    if state.get("seed") != run["seed"]:
        raise CheckpointError(f"checkpoint {folder} used data-order seed {state.get('seed')}; this run asks for "
                              f"{run['seed']}: the batch order would not continue")
    if state.get("nsp", True) != run["nsp"]:
        raise CheckpointError(f"checkpoint {folder} was trained {'with' if state.get('nsp', True) else 'without'} "
                              f"next-sentence prediction; resume it with the same objective")
    if state.get("frozen", []) != run["frozen"]:
        raise CheckpointError(f"checkpoint {folder} froze {', '.join(state.get('frozen', [])) or 'no parameter'}; "
                              f"this run asks for {', '.join(run['frozen']) or 'none'}: resume it with the same "
                              f"frozen parameters (--freeze-word-embeddings)")
    order.load_state(state["data_order"])
    model.rng.bit_generator.state = state["model_rng_state"]
    step = int(state["step"])
    for key in ("steps", "lr", "warmup"):
        if key in state and state[key] != run[key]:
            log(f"note: resuming with {key}={run[key]} (checkpoint had {state[key]}): the run will not "
                f"match an uninterrupted one")
    log(f"resumed from {folder} at step {step}")
    return step, state["history"], optimizer_state


def _restore_optimizer(optimizer: AdamW, optimizer_state: dict, step: int) -> None:
    try:
        optimizer.load_state_dict(optimizer_state)
    except ValueError as e:
        raise CheckpointError(f"{OPTIMIZER_NAME} does not fit the model: {e}") from None
    if optimizer.step_count != step:
        raise CheckpointError(f"{OPTIMIZER_NAME} is at step {optimizer.step_count} but "
                              f"{TRAINER_STATE_NAME} says {step}")


def pretrain(model, train_arrays: dict, eval_arrays: dict | None, out_dir, steps: int, batch_size: int = 32,
             lr: float = 1e-4, warmup: int = 0, seed: int = 0, resume=False, *, overwrite: bool = False, tokenizer=None,
             log: Callable[[str], None] | None = None, weight_decay: float = 0.01, max_grad_norm: float = 1.0,
             eval_every: int | None = None, save_every: int | None = None, eval_batch_size: int | None = None,
             stop_at: int | None = None, progress: bool = True, plot: bool = True, nsp: bool = True,
             frozen: tuple = ()) -> TrainResult:
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
    overwrite : a fresh run over a folder that holds a checkpoint is refused unless this is True.
    tokenizer : optional, a ``Tokenizer``; its ``save_pretrained`` writes ``vocab.txt`` + ``tokenizer_config.json``
        into checkpoints.
    log : callable for messages (default: ``tqdm.write``).
    eval_every, save_every : in steps (default: ``max(1, steps // 10)``); both also happen at the end.
    stop_at : stop (with an evaluation and a checkpoint) after this many total steps, to split a run into
        sessions; the lr schedule still spans ``steps``.
    progress, plot : show a tqdm bar; save the loss/accuracy curve as PNG at the end.
    nsp : False trains the masked-LM loss alone (RoBERTa's finding, ``--no-nsp``) on the same instances; the
        NSP head then stays untrained and its accuracy means nothing.
    frozen : names of parameters that are never updated (``--freeze-word-embeddings``: the word embeddings, which
        the tied MLM decoder shares); their gradients still count in the global-norm clipping.

    Under ``mpiexec -n N`` (``distributed/``) each rank computes a disjoint 1/N of every batch and the gradients
    are averaged: the same run as one process. Rank 0 alone logs, evaluates and writes checkpoints.
    """
    from tqdm.auto import tqdm
    dp = DataParallel.current()
    log, progress = dp.log(log or tqdm.write), progress and dp.is_root
    n_train = _check_arguments(model, train_arrays, eval_arrays, steps, batch_size, lr, warmup, tokenizer)
    eval_every = eval_every or max(1, steps // 10)
    save_every = save_every or max(1, steps // 10)
    eval_batch_size = eval_batch_size or batch_size
    stop_at = steps if stop_at is None else min(int(stop_at), steps)
    out_dir = Path(out_dir)
    with dp.together(), dp.run_folder(out_dir, log):         # one writer; debris of killed runs removed
        dp.start(batch_size, log, model=model, train=train_arrays, eval=eval_arrays, dtype=str(model.dtype),
                 resume=resume, options=(steps, batch_size, lr, warmup, seed, weight_decay, max_grad_norm, stop_at,
                                         sorted(frozen)))
        refuse_to_clobber(out_dir, CHECKPOINT_DIR, resume, overwrite)

        order = BatchOrder(n_train, batch_size, seed)
        history = {"loss": [], "mlm_accuracy": [], "nsp_accuracy": [], "lr": [], "grad_norm": [], "evals": []}
        step = 0
        optimizer_state = None
        if resume:
            step, history, optimizer_state = _restore(find_checkpoint(out_dir if resume is True else Path(resume)),
                                                      model, order, {"seed": seed, "steps": steps, "lr": lr,
                                                                     "warmup": warmup, "nsp": nsp,
                                                                     "frozen": sorted(frozen)}, log)
        elif (out_dir / CHECKPOINT_DIR).exists():
            log(f"note: overwrite: {out_dir / CHECKPOINT_DIR} will be replaced at the first save")

        optimizer = dp.optimizer(model.params, lr=lr, weight_decay=weight_decay, backend=model.backend,
                                 frozen=frozen)                                                # after loading
        if optimizer_state is not None:
            _restore_optimizer(optimizer, optimizer_state, step)

        def trainer_state(at: int) -> dict:
            return {"step": at, "steps": steps, "lr": lr, "warmup": warmup, "batch_size": batch_size, "seed": seed,
                    "model_rng_state": model.rng.bit_generator.state, "data_order": order.state(),
                    "history": history, "nsp": nsp, "frozen": sorted(frozen)}

        def run_eval(at: int):
            if eval_arrays is None or not dp.is_root:
                return None
            ev = {"step": at, **evaluate(model, eval_arrays, eval_batch_size)}
            history["evals"].append(ev)
            log(f"step {at}: eval loss {ev['loss']:.4f}  MLM acc {ev['mlm_accuracy']:.4f}  "
                f"NSP acc {ev['nsp_accuracy']:.4f}")
            return ev

        # ---- the job's callbacks: metrics, evaluation, checkpoints -----------------------------------
        xp = model.xp
        saved = {"step": step if resume else None}
        tokens = {"seen": 0}

        def record(state: LoopState):
            mc, mn, nc, nn = batch_accuracies(state.last.output, state.batch)
            history["loss"].append(state.last.loss)
            history["mlm_accuracy"].append(mc / mn if mn else float("nan"))
            history["nsp_accuracy"].append(nc / nn)
            history["lr"].append(state.lr)
            history["grad_norm"].append(state.last.grad_norm)
            tokens["seen"] += state.batch["tokens"]                  # of the global batch

        def evaluate_and_save(state: LoopState):
            if state.step % eval_every == 0 or state.step == stop_at:
                run_eval(state.step)
            if state.step % save_every == 0 or state.step == stop_at:
                dp.before_save(optimizer)                                  # every rank (ZeRO-1: a gather)
                if dp.is_root:
                    save_checkpoint(out_dir, model, optimizer, trainer_state(state.step), tokenizer)
                    saved["step"] = state.step

        def kept(state: LoopState) -> str:
            if saved["step"] is None:
                return "no checkpoint had been written yet"
            return f"the last good checkpoint ({out_dir / CHECKPOINT_DIR}, step {saved['step']}) is kept"

        def postfix(state: LoopState) -> dict:
            return {"loss": f"{state.last.loss:.3f}", "mlm": f"{history['mlm_accuracy'][-1]:.3f}",
                    "nsp": f"{history['nsp_accuracy'][-1]:.2f}", "tok_s": f"{tokens['seen'] / state.seconds:.0f}"}

        def model_inputs(batch: dict) -> dict:
            return {"input_ids": batch["input_ids"], "token_type_ids": batch["token_type_ids"],
                    "attention_mask": batch["attention_mask"], "labels": batch["labels"],
                    "next_sentence_label": batch["next_sentence_labels"] if nsp else None}

        global_batches = (order.next() for _ in itertools.count())                          # endless, in order
        batches = ({**take_batch(train_arrays, dp.shard(idx, model), xp),                         # this rank's rows
                    "tokens": int(train_arrays["attention_mask"][idx].sum())} for idx in global_batches)
        loop = run_loop(model, optimizer, batches, schedule=lambda s: linear_warmup_decay(s, steps, warmup, lr),
                        total_steps=steps, start_step=step, stop_at=stop_at, max_grad_norm=max_grad_norm,
                        inputs=model_inputs, callbacks=(record, evaluate_and_save), kept=kept,
                        advice="Lower the learning rate or raise the warmup.", postfix=postfix, progress=progress,
                        desc="pretrain", log=log, sync=dp.sync_for(model))
        step = loop.step

        result = TrainResult(step=step, diverged=loop.diverged, message=loop.message)
        if (not history["evals"] or history["evals"][-1]["step"] != step) and not result.diverged:
            run_eval(step)
        result.losses, result.learning_rates, result.evals = list(history["loss"]), list(history["lr"]), \
            list(history["evals"])
        result.mlm_accuracies, result.nsp_accuracies = list(history["mlm_accuracy"]), list(history["nsp_accuracy"])
        if history["evals"]:
            last = history["evals"][-1]
            result.mlm_accuracy, result.nsp_accuracy, result.eval_loss = (last["mlm_accuracy"], last["nsp_accuracy"],
                                                                          last["loss"])
            result.nsp_auc = last.get("nsp_auc")
        result.checkpoint_dir = out_dir / CHECKPOINT_DIR if saved["step"] is not None else None
        result.tokens_per_second = tokens["seen"] / loop.seconds if loop.seconds else 0.0
        if plot and history["loss"] and dp.is_root:
            from ..viz.figures import plot_training_curves

            result.curve_path = plot_training_curves(history, out_dir / CURVE_NAME)
        return result
