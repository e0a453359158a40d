r"""Fine-tuning: sentence (and sentence-pair) classification with a pretrained BERT.

BERT's point is transfer: pretrain once on unlabelled text, then fine-tune all the weights on
a small labelled task. The task model is :class:`~bert_from_scratch.model.BertForSequenceClassification`::

    [CLS] a [SEP] (b [SEP]) ─ encoder ─> h_[CLS] ─ pooler (dense + tanh) ─ dropout ─ linear ─> logits (B, K)

trained with the mean cross-entropy over a batch of ``B`` examples with labels ``y_b``:

.. math::
    L = \frac1B \sum_b -\log \operatorname{softmax}(z_b)_{y_b},\qquad
    g = \nabla_\theta L \xrightarrow{\ \text{clip } \lVert g\rVert\le 1\ } \text{AdamW}(\eta_s,\ \lambda=0.01)

with the learning rate :math:`\eta_s` warming up linearly over the first ``warmup_ratio`` of
the steps and then decaying linearly to 0 (:func:`~bert_from_scratch.training.optim.linear_warmup_decay`),
the recipe of google-research/bert's ``run_classifier.py``.

**Each epoch** ends with an evaluation on the dev split: accuracy, macro-F1 and mean loss. The
model with the best dev accuracy (ties: the better macro-F1, then the lower dev loss to 4 decimals) is written to ``out_dir/best/``
(``config.json`` with ``id2label``, ``model.safetensors``, ``vocab.txt``, ``training_args.json``),
atomically: a crash never leaves a half-written checkpoint. Training stops early after
``patience`` epochs without improvement. At the end the best weights are loaded back and scored
once on the test split; the test confusion matrix goes to ``out_dir/confusion_matrix.png`` and
every number to ``out_dir/results.json``.

**Batches by length** (:func:`~bert_from_scratch.data.classification.length_bucketed_batches`):
each batch is a random draw of the data holding similar lengths, so there is about half as much
padding to compute on. Evaluation runs in length order for the same reason (predictions are put
back in the original order). The steps run in the one training loop
(:mod:`~bert_from_scratch.training.loop`); this module describes the job: its batches, schedule,
per-epoch evaluation, early stopping and best checkpoint.

**Metrics.** With the confusion matrix :math:`C_{ij}` = number of examples of true class
:math:`i` predicted as :math:`j`:

.. math::
    \text{accuracy} = \frac{\sum_i C_{ii}}{\sum_{ij} C_{ij}},\qquad
    F_1^{(k)} = \frac{2 C_{kk}}{2 C_{kk} + \sum_{j\ne k} C_{kj} + \sum_{i\ne k} C_{ik}},\qquad
    \text{macro-}F_1 = \frac{1}{|K'|}\sum_{k\in K'} F_1^{(k)}

where :math:`K'` are the classes that occur among the true labels or the predictions (as
scikit-learn's ``f1_score(average="macro")`` does).

**Command line** (``cli/finetune.py``)::

    bert-from-scratch finetune                                    # all-MiniLM-L6-v2 on Rotten Tomatoes
    bert-from-scratch finetune --init runs/pretrain/checkpoint    # our own pretraining checkpoint
    bert-from-scratch finetune --init random --like runs/pretrain/checkpoint   # same architecture, no pretraining
    bert-from-scratch finetune --dataset bbc                      # 5 news topics
    bert-from-scratch finetune --init runs/pretrain --classifier-first 10   # LP-FT: the classifier alone first
    bert-from-scratch finetune --init minilm --train my_train.csv --dev my_dev.csv [--test my_test.csv]
    bert-from-scratch predict --checkpoint runs/finetune "a gripping, beautifully acted film"

``--init random`` starts from BERT's initialisation with the architecture (``config.json``) and
vocabulary (``vocab.txt``) of ``--like`` (``minilm`` by default, or a checkpoint folder): the
baseline that shows what pretraining adds. On Rotten Tomatoes the command trains by default on a
seeded random 4,000 of the 10,201 training examples (``--all-train`` for all of them) so that the
default run stays within ~15 minutes on 2 cores; dev (1,275) and test (1,276) are always whole.
CSV files have a header with the columns ``text``, ``label`` and optionally ``text_b`` (pairs).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..checkpoint import load_safetensors, load_state_dict
from ..constants import BEST_DIR, CONFUSION_MATRIX_NAME, RESULTS_NAME, TRAINING_ARGS_NAME, WEIGHTS_NAME
from ..data.classification import (EncodedExamples, FinetuneError, collate, encode_examples,  # noqa: F401
                                   length_bucketed_batches, length_ordered_batches)
from ..files import atomic_dir, atomic_write
from ..model.heads import WORD_EMBEDDINGS
from ..nn.layers import softmax_forward
from ..nn.xp import to_numpy
from .loop import LoopState, run_loop
from .metrics import accuracy_from_confusion, confusion_matrix, macro_f1_from_confusion
from .optim import AdamW, linear_warmup_decay
from ..distributed.job import DataParallel
from .run_folder import refuse_to_clobber
from .classifier_first import train_classifier_first

# ======================================================================================
# Metrics
# ======================================================================================
def evaluate_classifier(model, encoded: EncodedExamples, batch_size: int = 64, pad_token_id: int = 0) -> dict:
    """Loss, accuracy, macro-F1, confusion matrix (K, K), predictions (N,) and probabilities (N, K).

    No dropout; batches in length order (less padding); results in the examples' order. The loss
    is the mean over examples, so it does not depend on ``batch_size``.
    """
    K = model.num_labels
    probs = np.empty((len(encoded), K), dtype=np.float64)               # (N, K)
    loss_sum = 0.0
    for idx, batch in length_ordered_batches(encoded, batch_size, pad_token_id):
        out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                            labels=batch["labels"], training=False)
        probs[idx] = softmax_forward(to_numpy(out.logits).astype(np.float64))[0]
        loss_sum += out.loss * len(idx)
    predictions = probs.argmax(axis=1)                                  # (N,)
    cm = confusion_matrix(encoded.labels, predictions, K)
    return {"loss": loss_sum / len(encoded), "accuracy": accuracy_from_confusion(cm),
            "macro_f1": macro_f1_from_confusion(cm), "confusion_matrix": cm, "predictions": predictions,
            "probabilities": probs}


# ======================================================================================
# The loop
# ======================================================================================
@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    ``epochs``: one dict per epoch run: ``epoch`` (1-based), ``train_loss`` (mean over the
    epoch's steps), ``dev_loss``, ``dev_accuracy``, ``dev_macro_f1``, ``seconds``, ``improved``.
    ``best_epoch``: the epoch whose weights are in ``checkpoint_dir`` (0 if training diverged
    before any epoch ended). ``test_*``: the best model on the test split (None without one).
    ``confusion_matrix``: (K, K), rows true / columns predicted, of the best model on ``test``
    (or on dev without a test split): ``confusion_split`` says which.
    """
    label_names: list
    epochs: list = field(default_factory=list)
    best_epoch: int = 0
    best_dev_accuracy: float | None = None
    best_dev_macro_f1: float | None = None
    test_accuracy: float | None = None
    test_macro_f1: float | None = None
    test_loss: float | None = None
    confusion_matrix: np.ndarray | None = None
    confusion_split: str = ""
    steps: int = 0
    train_examples: int = 0
    majority_dev_accuracy: float | None = None
    stopped_early: bool = False
    classifier_first: dict | None = None        # LP-FT's phase 1 (classifier_first.py), when it ran
    diverged: bool = False
    message: str = ""
    seconds: float = 0.0
    checkpoint_dir: Path | None = None
    confusion_matrix_path: Path | None = None
    results_path: Path | None = None

    @property
    def dev_accuracies(self) -> list:
        return [e["dev_accuracy"] for e in self.epochs]

    @property
    def dev_macro_f1s(self) -> list:
        return [e["dev_macro_f1"] for e in self.epochs]

    @property
    def dev_losses(self) -> list:
        return [e["dev_loss"] for e in self.epochs]

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("label_names", "epochs", "best_epoch", "best_dev_accuracy",
                                           "best_dev_macro_f1", "test_accuracy", "test_macro_f1", "test_loss",
                                           "confusion_split", "steps", "train_examples", "majority_dev_accuracy",
                                           "stopped_early", "classifier_first", "diverged", "message", "seconds")}
        d["confusion_matrix"] = None if self.confusion_matrix is None else self.confusion_matrix.tolist()
        for k in ("checkpoint_dir", "confusion_matrix_path"):
            d[k] = None if getattr(self, k) is None else str(getattr(self, k))
        return d


def _check_data(data, num_labels: int):
    for split in ("train", "dev", "test", "label_names"):
        if not hasattr(data, split):
            raise FinetuneError(f"data must have .train, .dev, .test and .label_names; it has no .{split}")
    if len(data.label_names) != num_labels:
        raise FinetuneError(f"the data has {len(data.label_names)} labels ({', '.join(map(str, data.label_names))}) "
                            f"but the model's classifier has {num_labels} outputs")
    if len(data.label_names) < 2:
        raise FinetuneError(f"classification needs at least 2 labels; got {list(data.label_names)}")
    if not data.train:
        raise FinetuneError("the train split is empty")
    if not data.dev:
        raise FinetuneError("the dev split is empty: early stopping and model selection need one")


def _save_best(out_dir: Path, model, tokenizer, training_args: dict) -> Path:
    """Write ``out_dir/best`` atomically (temporary folder, then swapped in): config, weights, vocab, args."""
    target = out_dir / BEST_DIR
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)                      # config.json (with id2label) + model.safetensors
        tokenizer.save_pretrained(tmp, model_max_length=model.config.max_position_embeddings)
        (tmp / TRAINING_ARGS_NAME).write_text(json.dumps(training_args, indent=1) + "\n", encoding="utf-8")
    return target


def _check_arguments(model, tokenizer, *, lr, warmup_ratio, max_train_examples, **counts) -> None:
    """Refuse bad options before any work, in one line each. ``counts``: the integer options."""
    for name, low in (("epochs", 1), ("batch_size", 1), ("max_length", 3), ("patience", 1), ("eval_batch_size", 1),
                      ("classifier_first", 0)):
        value = counts[name]
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise FinetuneError(f"{name} must be an integer >= {low}; got {value!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise FinetuneError(f"lr must be a positive number; got {lr!r}")
    if not 0.0 <= warmup_ratio < 1.0:
        raise FinetuneError(f"warmup_ratio must be in [0, 1); got {warmup_ratio!r}")
    if max_train_examples is not None and (not isinstance(max_train_examples, (int, np.integer))
                                           or max_train_examples < 1):
        raise FinetuneError(f"max_train_examples must be a positive integer or None; got {max_train_examples!r}")
    if not hasattr(model, "num_labels"):
        raise FinetuneError(f"model must be a BertForSequenceClassification; got {type(model).__name__}")
    if counts["max_length"] > model.config.max_position_embeddings:
        raise FinetuneError(f"max_length {counts['max_length']} exceeds the model's max_position_embeddings "
                            f"{model.config.max_position_embeddings}")
    if len(tokenizer) != model.config.vocab_size:
        raise FinetuneError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                            f"{model.config.vocab_size}")


def finetune(model, tokenizer, data, out_dir, epochs: int = 3, batch_size: int = 32, lr: float = 5e-5,
             warmup_ratio: float = 0.1, max_length: int = 64, patience: int = 1, seed: int = 0,
             max_train_examples: int | None = None, progress: bool = True,
             log: Callable[[str], None] | None = None, weight_decay: float = 0.01, max_grad_norm: float = 1.0,
             eval_batch_size: int = 64, plot: bool = True, run_info: dict | None = None,
             overwrite: bool = False, classifier_first: int = 0, freeze_word_embeddings=False) -> FinetuneResult:
    """Fine-tune ``model`` (a ``BertForSequenceClassification``) on ``data``; see the module docstring.

    Parameters
    ----------
    model, tokenizer : the classifier (trained in place; on return it holds the *best* weights)
        and the tokenizer of its vocabulary.
    data : ``data.labeled.ClassificationData``-like: ``train``, ``dev``, ``test`` lists of examples with
        ``.text``, ``.text_b`` (None for single sentences), ``.label`` (int), and ``label_names``.
        ``test`` may be empty.
    out_dir : folder for ``best/``, ``confusion_matrix.png``, ``results.json``; checked writable first.
    epochs, batch_size, lr, warmup_ratio : at most ``epochs`` passes; peak learning rate ``lr``
        reached after ``warmup_ratio`` of all steps, then linear decay to 0.
    max_length : word pieces per example, special tokens included (longer ones are cut).
    patience : stop after this many epochs without a better dev accuracy (ties: macro-F1, then dev loss).
    seed : batch order and dropout (the classifier's init is the model's own ``seed``).
    max_train_examples : train on a seeded random subset of this size (the dev/test splits stay whole).
    overwrite : a run over a folder that holds a ``best/`` model is refused unless this is True.
    classifier_first : first train the classifier alone on the frozen encoder's features for this many epochs,
        then fine-tune everything (LP-FT, :mod:`.classifier_first`); 0: plain fine-tuning.
    freeze_word_embeddings : AdamW leaves the word embeddings as they start (``pretrain --freeze-word-embeddings``).
    """
    from tqdm.auto import tqdm

    dp = DataParallel.current()                 # under mpiexec: 1/N of each batch per rank; rank 0 logs and saves
    log, progress = dp.log(log or tqdm.write), progress and dp.is_root
    _check_arguments(model, tokenizer, epochs=epochs, batch_size=batch_size, max_length=max_length,
                     patience=patience, eval_batch_size=eval_batch_size, lr=lr, warmup_ratio=warmup_ratio,
                     max_train_examples=max_train_examples, classifier_first=classifier_first)
    K = model.num_labels
    _check_data(data, K)
    out_dir = Path(out_dir)
    with dp.together(), dp.run_folder(out_dir, log):         # one writer; debris of killed runs removed
        dp.check_same(model=model, data=repr((data.train, data.dev, data.label_names)), log=log, options=(
            epochs, batch_size, lr, warmup_ratio, max_length, patience, seed, max_train_examples, weight_decay,
            classifier_first, freeze_word_embeddings))
        refuse_to_clobber(out_dir, BEST_DIR, False, overwrite, resume_flag="")
        model.label_names = [str(n) for n in data.label_names]      # -> id2label in config.json
        started = time.perf_counter()

        data_rng = np.random.default_rng(seed)
        train_examples = list(data.train)
        if max_train_examples is not None and max_train_examples < len(train_examples):
            keep = np.sort(data_rng.choice(len(train_examples), size=max_train_examples, replace=False))
            train_examples = [train_examples[i] for i in keep]
        pad = tokenizer.pad_token_id
        train = encode_examples(tokenizer, train_examples, max_length, K, "train")
        dev = encode_examples(tokenizer, data.dev, max_length, K, "dev")
        test = encode_examples(tokenizer, data.test, max_length, K, "test") if len(data.test) else None

        steps_per_epoch = math.ceil(len(train) / batch_size)
        dp.bounds(min(batch_size, len(train) % batch_size or batch_size))     # every rank has rows in every batch
        total_steps = epochs * steps_per_epoch
        warmup_steps = int(round(warmup_ratio * total_steps))
        model.rng = np.random.default_rng(seed)                     # dropout masks: reproducible per run
        optimizer = AdamW(model.params, lr=lr, weight_decay=weight_decay, backend=model.backend,
                          frozen=(WORD_EMBEDDINGS,) if freeze_word_embeddings else ())
        training_args = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "warmup_ratio": warmup_ratio,
                         "max_length": max_length, "patience": patience, "seed": seed,
                         "max_train_examples": max_train_examples, "train_examples": len(train),
                         "weight_decay": weight_decay, "max_grad_norm": max_grad_norm, "classifier_first":
                         classifier_first, "freeze_word_embeddings": freeze_word_embeddings, **(run_info or {})}
        result = FinetuneResult(label_names=list(model.label_names), train_examples=len(train))
        if classifier_first:                                        # LP-FT's phase 1: the classifier alone
            result.classifier_first = train_classifier_first(model, train, dev, classifier_first, batch_size, seed=seed,
                                                             eval_batch_size=eval_batch_size, pad_token_id=pad, log=log)
        majority = np.bincount(dev.labels, minlength=K).max() / len(dev)
        result.majority_dev_accuracy = float(majority)
        log(f"fine-tuning on {len(train)} train / {len(dev)} dev / {len(test) if test else 0} test examples, "
            f"{K} labels; {steps_per_epoch} steps per epoch, at most {total_steps} steps "
            f"(warmup {warmup_steps}); majority-class dev accuracy {majority:.4f}")

        def epochs_of_batches():
            """Each epoch's length-bucketed batches, drawn when the epoch starts; the last one is marked."""
            for epoch in range(1, epochs + 1):
                batches = length_bucketed_batches(train.lengths, batch_size, data_rng)
                for n, idx in enumerate(batches):
                    batch = collate(train, idx, pad)      # padded to the global batch's longest, as one process
                    if dp.size > 1:                       # this rank's rows; they key its dropout masks
                        rows = dp.shard(np.arange(len(idx)), model)
                        batch = {k: v[rows] for k, v in batch.items()}
                    yield {**batch, "epoch": epoch, "epoch_end": n == len(batches) - 1}

        # ---- the job's callbacks: running train metrics, the end of an epoch ---------------------------
        report_every = max(1, steps_per_epoch // 5)
        running = {"loss_sum": 0.0, "correct": 0, "seen": 0, "t_epoch": time.perf_counter(), "first_step": 0}
        best = {"key": None, "epochs_without_gain": 0}

        def record(state: LoopState):
            batch, n = state.batch, len(state.batch["labels"])
            running["loss_sum"] += state.last.loss * n
            running["correct"] += int((to_numpy(state.last.output.logits).argmax(axis=1) == batch["labels"]).sum())
            running["seen"] += n
            if not progress and state.step % report_every == 0:            # a log line instead of the bar
                log(f"epoch {batch['epoch']} step {state.step}/{total_steps}: train loss "
                    f"{running['loss_sum'] / running['seen']:.4f}  accuracy {running['correct'] / running['seen']:.4f}  "
                    f"({(time.perf_counter() - running['t_epoch']) / (state.step - running['first_step']):.2f} s/step)")

        def end_of_epoch(state: LoopState):
            if not state.batch["epoch_end"]:
                return
            epoch = state.batch["epoch"]
            ev = evaluate_classifier(model, dev, eval_batch_size, pad)
            # ties broken by macro-F1, then by dev loss to 4 decimals (a change below that is no progress)
            key = (ev["accuracy"], ev["macro_f1"], -round(ev["loss"], 4))
            improved = best["key"] is None or key > best["key"]
            record_ = {"epoch": epoch, "train_loss": running["loss_sum"] / running["seen"],
                       "train_accuracy": running["correct"] / running["seen"], "dev_loss": ev["loss"],
                       "dev_accuracy": ev["accuracy"], "dev_macro_f1": ev["macro_f1"],
                       "seconds": time.perf_counter() - running["t_epoch"], "improved": improved}
            result.epochs.append(record_)
            log(f"epoch {epoch}: train loss {record_['train_loss']:.4f}  dev loss {ev['loss']:.4f}  "
                f"dev accuracy {ev['accuracy']:.4f}  dev macro-F1 {ev['macro_f1']:.4f}  "
                f"({record_['seconds']:.0f} s){'  -> best, saved' if improved else ''}")
            if improved:
                best["key"], best["epochs_without_gain"] = key, 0
                result.best_epoch, result.best_dev_accuracy, result.best_dev_macro_f1 = epoch, key[0], key[1]
                result.checkpoint_dir = (_save_best(out_dir, model, tokenizer, {**training_args, "best_epoch": epoch})
                                         if dp.is_root else out_dir / BEST_DIR)
            else:
                best["epochs_without_gain"] += 1
                if best["epochs_without_gain"] >= patience and epoch < epochs:
                    result.stopped_early = True
                    state.stop = True
                    log(f"early stop: no better dev accuracy for {patience} epoch(s); best was epoch {result.best_epoch}")
            running.update(loss_sum=0.0, correct=0, seen=0, t_epoch=time.perf_counter(), first_step=state.step)

        def kept(state: LoopState) -> str:
            if not result.best_epoch:
                return "no checkpoint had been written yet"
            return f"the best model so far (epoch {result.best_epoch}) is kept in {out_dir / BEST_DIR}"

        shown = {}

        def postfix(state: LoopState) -> dict:
            if running["seen"]:                         # (zero right after an epoch ends: keep the last numbers)
                shown.update(epoch=state.batch["epoch"], loss=f"{running['loss_sum'] / running['seen']:.3f}",
                             acc=f"{running['correct'] / running['seen']:.3f}")
            return shown

        def model_inputs(batch: dict) -> dict:
            return {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask", "labels")}

        loop = run_loop(model, optimizer, epochs_of_batches(),
                        schedule=lambda s: linear_warmup_decay(s, total_steps, warmup_steps, lr), total_steps=total_steps,
                        max_grad_norm=max_grad_norm, inputs=model_inputs, callbacks=(record, end_of_epoch), kept=kept,
                        postfix=postfix, progress=progress, desc="finetune", log=log, sync=dp.sync_for(model))
        step = loop.step
        result.diverged, result.message = loop.diverged, loop.message
        result.steps = step

        if result.checkpoint_dir is not None and dp.is_root:        # rank 0 alone reads best/ back, scores test
            # the best weights back into the model (exactly what best/ holds), then the test split once
            load_state_dict(model, load_safetensors(result.checkpoint_dir / WEIGHTS_NAME),
                            source=str(result.checkpoint_dir))
            final = evaluate_classifier(model, test if test is not None else dev, eval_batch_size, pad)
            result.confusion_matrix = final["confusion_matrix"]
            result.confusion_split = "test" if test is not None else "dev"
            if test is not None:
                result.test_accuracy, result.test_macro_f1, result.test_loss = (final["accuracy"], final["macro_f1"],
                                                                                final["loss"])
                log(f"best model (epoch {result.best_epoch}) on test: accuracy {final['accuracy']:.4f}  "
                    f"macro-F1 {final['macro_f1']:.4f}  loss {final['loss']:.4f}")
            if plot:
                from ..viz.figures import plot_confusion_matrix

                title = (f"{result.confusion_split} split, best epoch {result.best_epoch}: accuracy "
                         f"{final['accuracy']:.3f}, macro-F1 {final['macro_f1']:.3f}")
                result.confusion_matrix_path = plot_confusion_matrix(result.confusion_matrix, result.label_names,
                                                                     out_dir / CONFUSION_MATRIX_NAME, title)
        result.seconds = time.perf_counter() - started
        if not dp.is_root:
            return result
        result.results_path = atomic_write(out_dir / RESULTS_NAME,
                                           json.dumps({**result.to_dict(), "training_args": training_args}, indent=1)
                                           + "\n")
        return result
