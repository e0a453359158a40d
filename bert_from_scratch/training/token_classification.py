r"""Fine-tuning for token classification (tagging): one label per word, on the one training loop.

The model is ``BertForTokenClassification``: the encoder's last hidden states, dropout, then one
linear layer per position, ``(B, T, H) -> (B, T, K)``; no pooler. The loss is the mean
cross-entropy over the labelled positions only (a word's first piece; see
:mod:`~bert_from_scratch.data.token_classification`):

.. math::
    L = \frac{1}{|\mathcal{W}|}\sum_{(b,t)\in\mathcal{W}} -\log\operatorname{softmax}(z_{bt})_{y_{bt}}

Same recipe as sentence classification (:mod:`~bert_from_scratch.training.finetuning`): AdamW, linear
warmup then decay, gradient clipping at 1, one dev evaluation per epoch (word accuracy), the best
epoch's weights in ``out_dir/best`` (a Hugging Face ``BertForTokenClassification`` folder), early
stopping, and the best model scored once on test, next to the majority-tag-per-word baseline, with a
document-bootstrap 95% interval, per-tag F1 and the most-confused tag pairs (``results.json``).

Command line::

    bert-from-scratch finetune --task token-classification                       # MiniLM on Brown POS
    bert-from-scratch finetune --task token-classification --init runs/pretrain  # our own checkpoint
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..constants import BEST_DIR, RESULTS_NAME, WEIGHTS_NAME
from ..data.classification import FinetuneError, length_bucketed_batches, length_ordered_batches
from ..data.token_classification import EncodedTagged, collate_tagged, encode_tagged
from ..files import atomic_write
from ..nn.xp import to_numpy
from .classification_models import load_for_classification
from .finetuning import _save_best
from .loop import LoopState, run_loop
from .metrics import confusion_matrix, macro_f1_from_confusion, wilson_interval
from .optim import AdamW, linear_warmup_decay
from .run_folder import hold_run_folder, refuse_to_clobber
from .token_metrics import document_bootstrap_interval, majority_tag_baseline, most_confused

MINILM = "all-MiniLM-L6-v2"


def load_for_token_classification(init, num_labels: int, seed: int = 0, like=MINILM, dtype=np.float32, log=None):
    """``(model, tokenizer)``: a ``BertForTokenClassification`` with a new ``(num_labels, H)`` classifier on
    MiniLM's encoder (``"minilm"``), a checkpoint folder's, or random weights (``"random"``, shaped ``like``):
    the sentence classifier's loader (``classification_models.py``) with the token head."""
    from ..model.task_models import BertForTokenClassification

    return load_for_classification(init, num_labels, seed=seed, like=like, dtype=dtype, log=log,
                                   model_class=BertForTokenClassification)


def predict_tags(model, encoded: EncodedTagged, batch_size: int = 64, pad_token_id: int = 0) -> dict:
    """Per-sentence word predictions (``-1`` for words with no piece), the mean loss over labelled words,
    and the logits' argmax at each word start. No dropout; batches in length order."""
    words = [None] * len(encoded)
    loss_sum, counted = 0.0, 0
    for idx, batch in length_ordered_batches(encoded, batch_size, pad_token_id, collate_tagged):
        out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                            labels=batch["labels"], training=False)
        pred = to_numpy(out.logits).argmax(axis=-1)                     # (B, T)
        n = int((batch["labels"] != -100).sum())
        loss_sum += float(out.loss) * n
        counted += n
        for b, i in enumerate(idx):
            starts = encoded.word_starts[i]
            words[i] = np.where(starts >= 0, pred[b, np.maximum(starts, 0)], -1)
    return {"words": words, "loss": loss_sum / max(counted, 1)}


def score_tags(encoded: EncodedTagged, sentences, predicted_words: list, label_names) -> dict:
    """Word accuracy (words cut off or dropped count as wrong), macro-F1 over tags, the confusion matrix."""
    index = {n: i for i, n in enumerate(label_names)}
    true = np.concatenate([[index[t] for t in s.tags] for s in sentences]).astype(np.int64)
    pred = np.concatenate(predicted_words).astype(np.int64)
    kept = pred >= 0
    cm = confusion_matrix(true[kept], pred[kept], len(label_names))
    return {"accuracy": float((true == pred).mean()), "macro_f1": macro_f1_from_confusion(cm),
            "confusion_matrix": cm, "true": true, "pred": pred}


@dataclass
class TaggingResult:
    label_names: list
    epochs: list = field(default_factory=list)
    best_epoch: int = 0
    best_dev_accuracy: float | None = None
    test: dict | None = None            # accuracy, interval, macro-F1, baseline, most confused, per tag F1
    steps: int = 0
    diverged: bool = False
    message: str = ""
    seconds: float = 0.0
    checkpoint_dir: Path | None = None
    results_path: Path | None = None


def _test_report(model, tokenizer, data, test: EncodedTagged, batch_size: int, log) -> dict:
    pred = predict_tags(model, test, batch_size, tokenizer.pad_token_id)
    sc = score_tags(test, data.test, pred["words"], data.label_names)
    per_doc: dict[str, list] = {}
    for s, p in zip(data.test, pred["words"]):
        idx = np.array([data.label_names.index(t) for t in s.tags])
        c = per_doc.setdefault(s.doc, [0, 0])
        c[0] += int((idx == p).sum())
        c[1] += len(idx)
    correct, words = zip(*per_doc.values())
    baseline = majority_tag_baseline(data.train, data.test)
    cm = sc["confusion_matrix"]
    tp = np.diag(cm).astype(float)
    f1 = 2 * tp / np.maximum(cm.sum(0) + cm.sum(1), 1)
    report = {"accuracy": sc["accuracy"], "words": int(len(sc["true"])), "documents": len(per_doc),
              "interval_95_document_bootstrap": document_bootstrap_interval(correct, words),
              "interval_95_wilson_words": wilson_interval(sc["accuracy"], len(sc["true"])),
              "macro_f1": sc["macro_f1"], "loss": pred["loss"],
              "per_tag_f1": {n: float(f1[i]) for i, n in enumerate(data.label_names)},
              "most_confused": most_confused(sc["true"][sc["pred"] >= 0], sc["pred"][sc["pred"] >= 0],
                                             data.label_names),
              "majority_tag_baseline": baseline, "truncated_words": test.truncated_words,
              "dropped_words": test.dropped_words, "confusion_matrix": cm.tolist()}
    lo, hi = report["interval_95_document_bootstrap"]
    log(f"test word accuracy {sc['accuracy']:.4f} (95% document bootstrap {lo:.4f}-{hi:.4f}, "
        f"{report['words']} words in {len(per_doc)} documents); majority tag per word {baseline['accuracy']:.4f}")
    log("most confused (true -> predicted): " + ", ".join(f"{a}->{b} {n}" for a, b, n, _ in report["most_confused"]))
    return report


def finetune_tagger(model, tokenizer, data, out_dir, epochs: int = 1, batch_size: int = 32, lr: float = 1e-4,
                    warmup_ratio: float = 0.1, max_length: int = 128, patience: int = 1, seed: int = 0,
                    max_train_sentences: int | None = None, max_eval_sentences: int | None = None,
                    progress: bool = True, log: Callable[[str], None] | None = None, weight_decay: float = 0.01,
                    max_grad_norm: float = 1.0, eval_batch_size: int = 64, run_info: dict | None = None,
                    overwrite: bool = False) -> TaggingResult:
    """Fine-tune ``model`` (a ``BertForTokenClassification``) on ``data`` (``data.brown.TaggedData``-like).

    ``max_train_sentences`` / ``max_eval_sentences``: seeded random subsets (the eval limit applies to dev
    and test alike; whole documents are kept in the test report's interval). See the module docstring.
    """
    from tqdm.auto import tqdm

    log = log or tqdm.write
    from ..distributed.job import DataParallel
    if DataParallel.current().size > 1:          # N ranks would each train the whole job into one folder
        raise FinetuneError("token classification does not run data-parallel yet: launch it without mpiexec "
                            "(sentence classification and pretraining do run under mpiexec)")
    for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1), ("max_length", max_length, 3),
                             ("patience", patience, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise FinetuneError(f"{name} must be an integer >= {low}; got {value!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise FinetuneError(f"lr must be a positive number; got {lr!r}")
    if getattr(model, "num_labels", None) != len(data.label_names):
        raise FinetuneError(f"the data has {len(data.label_names)} tags but the model has "
                            f"{getattr(model, 'num_labels', None)} outputs")
    if max_length > model.config.max_position_embeddings:
        raise FinetuneError(f"max_length {max_length} exceeds the model's max_position_embeddings "
                            f"{model.config.max_position_embeddings}")
    if not data.train or not data.dev:
        raise FinetuneError("token classification needs non-empty train and dev splits")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)

    def subset(sentences, limit):
        if limit is None or limit >= len(sentences):
            return list(sentences)
        return [sentences[i] for i in np.sort(rng.choice(len(sentences), size=limit, replace=False))]

    with hold_run_folder(out_dir, log):
        refuse_to_clobber(out_dir, BEST_DIR, False, overwrite, resume_flag="")
        started = time.perf_counter()
        model.label_names = list(data.label_names)
        train_s = subset(data.train, max_train_sentences)
        dev_s = subset(data.dev, max_eval_sentences)
        test_s = subset(data.test, max_eval_sentences)
        data = type(data)(train=data.train, dev=dev_s, test=test_s, label_names=list(data.label_names),
                          name=data.name)
        pad = tokenizer.pad_token_id
        train = encode_tagged(tokenizer, train_s, data.label_names, max_length, "train")
        dev = encode_tagged(tokenizer, dev_s, data.label_names, max_length, "dev")
        test = encode_tagged(tokenizer, test_s, data.label_names, max_length, "test") if test_s else None
        steps_per_epoch = math.ceil(len(train) / batch_size)
        total_steps = epochs * steps_per_epoch
        warmup_steps = int(round(warmup_ratio * total_steps))
        model.rng = np.random.default_rng(seed)
        optimizer = AdamW(model.params, lr=lr, weight_decay=weight_decay, backend=model.backend)
        args = {"task": "token-classification", "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "warmup_ratio": warmup_ratio, "max_length": max_length, "patience": patience, "seed": seed,
                "train_sentences": len(train), "dev_sentences": len(dev), "test_sentences": len(test or []),
                "weight_decay": weight_decay, "max_grad_norm": max_grad_norm, **(run_info or {})}
        result = TaggingResult(label_names=list(data.label_names))
        log(f"token classification: {len(train)} train / {len(dev)} dev / {len(test or [])} test sentences, "
            f"{len(data.label_names)} tags; {total_steps} steps (warmup {warmup_steps}); "
            f"{train.truncated_words} train words cut by max_length {max_length}")

        def batches():
            for epoch in range(1, epochs + 1):
                order = length_bucketed_batches(train.lengths, batch_size, rng)
                for n, idx in enumerate(order):
                    yield {**collate_tagged(train, idx, pad), "epoch": epoch, "epoch_end": n == len(order) - 1}

        running = {"loss": 0.0, "steps": 0, "t": time.perf_counter()}
        best = {"acc": None, "without": 0}

        def end_of_epoch(state: LoopState):
            running["loss"] += state.last.loss
            running["steps"] += 1
            if not state.batch["epoch_end"]:
                return
            epoch = state.batch["epoch"]
            pred = predict_tags(model, dev, eval_batch_size, pad)
            acc = score_tags(dev, dev_s, pred["words"], data.label_names)["accuracy"]
            improved = best["acc"] is None or acc > best["acc"]
            result.epochs.append({"epoch": epoch, "train_loss": running["loss"] / running["steps"],
                                  "dev_loss": pred["loss"], "dev_accuracy": acc, "improved": improved,
                                  "seconds": time.perf_counter() - running["t"]})
            log(f"epoch {epoch}: train loss {running['loss'] / running['steps']:.4f}  dev loss {pred['loss']:.4f}  "
                f"dev word accuracy {acc:.4f}{'  -> best, saved' if improved else ''}")
            if improved:
                best["acc"], best["without"] = acc, 0
                result.best_epoch, result.best_dev_accuracy = epoch, acc
                result.checkpoint_dir = _save_best(out_dir, model, tokenizer, {**args, "best_epoch": epoch})
            else:
                best["without"] += 1
                state.stop = best["without"] >= patience and epoch < epochs
            running.update(loss=0.0, steps=0, t=time.perf_counter())

        loop = run_loop(model, optimizer, batches(),
                        schedule=lambda s: linear_warmup_decay(s, total_steps, warmup_steps, lr),
                        total_steps=total_steps, max_grad_norm=max_grad_norm,
                        inputs=lambda b: {k: b[k] for k in ("input_ids", "token_type_ids", "attention_mask", "labels")},
                        callbacks=(end_of_epoch,), progress=progress, desc="finetune-tokens", log=log,
                        postfix=lambda s: {"loss": f"{s.last.loss:.3f}"})
        result.steps, result.diverged, result.message = loop.step, loop.diverged, loop.message
        if result.checkpoint_dir is not None and test is not None:
            from ..checkpoint import load_safetensors, load_state_dict

            load_state_dict(model, load_safetensors(result.checkpoint_dir / WEIGHTS_NAME),
                            source=str(result.checkpoint_dir))
            result.test = _test_report(model, tokenizer, data, test, eval_batch_size, log)
        result.seconds = time.perf_counter() - started
        summary = {k: getattr(result, k) for k in ("label_names", "epochs", "best_epoch", "best_dev_accuracy",
                                                   "test", "steps", "diverged", "message", "seconds")}
        result.results_path = atomic_write(out_dir / RESULTS_NAME,
                                           json.dumps({**summary, "training_args": args}, indent=1) + "\n")
        return result
