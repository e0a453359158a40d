r"""Linear probing, then fine-tuning (LP-FT): the classifier trained alone on frozen features first.

Fine-tuning starts from a random classifier. Its first gradients are noise, and they flow into the
pretrained encoder and move it before the classifier has learned what to read (Kumar et al. 2022,
"Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution"). LP-FT fits the
classifier alone on the frozen encoder's features first, then fine-tunes every weight from there::

    phase 1   pooled = pooler(encoder(x))        (B, H)   (or the tokens' mean) frozen, no dropout: once per example
              logits = pooled W^T + b            (B, K)   only W (K, H) and b (K,) are trained:
              softmax cross-entropy, AdamW, linear warmup and decay over ``epochs``; the epoch with the
              best dev accuracy is kept
    phase 2   the usual fine-tuning of every weight (:mod:`.finetuning`), from that classifier

Phase 1 runs the encoder once over the training and dev examples (its features do not change while only
the classifier learns), so it costs about one evaluation pass, not an epoch of training. It has its own
random stream (batch order), so phase 2 draws the same batches and dropout masks as a run without it.

``bert-from-scratch finetune --classifier-first 10`` (or ``transfer --classifier-first 10``) turns it on;
0, the default, is plain fine-tuning. Measured on Rotten Tomatoes in docs/results.md ("The classifier first").
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..data.classification import EncodedExamples, FinetuneError, length_ordered_batches
from ..model.task_heads import resolve_problem_type
from ..nn.layers import cross_entropy_backward, cross_entropy_forward, linear_backward, linear_forward
from .loop import LoopState, run_loop
from .optim import AdamW, linear_warmup_decay

CLASSIFIER = ("classifier.weight", "classifier.bias")
CLASSIFIER_FIRST_LR = 3e-3          # a linear model on fixed features: larger steps than fine-tuning's
SEED_STREAM = 1                     # phase 1's batch order: np.random.default_rng([seed, SEED_STREAM])


class StepOutput(NamedTuple):
    loss: float                     # the batch's mean cross-entropy
    logits: object                  # (B, K)


def pooled_features(model, encoded: EncodedExamples, batch_size: int = 64, pad_token_id: int = 0):
    """What the classifier reads for every example (``model.features``: the pooler's output, or the tokens' mean
    with ``pooling="mean"``), (N, H) on the model's device, in the examples' order.

    No dropout; batches in length order (less padding), as :func:`.finetuning.evaluate_classifier` runs them."""
    xp = model.xp
    out = xp.empty((len(encoded), model.config.hidden_size), dtype=model.dtype)      # (N, H)
    for idx, batch in length_ordered_batches(encoded, batch_size, pad_token_id):
        out[xp.asarray(idx)] = model.features(batch["input_ids"], batch["token_type_ids"],
                                              batch["attention_mask"])                 # (b, H)
    return out


class FeatureClassifier:
    """The classifier on fixed features, as the training loop sees a model: ``params`` (the full model's own
    ``classifier.*`` arrays, so an update lands in the model), ``forward(rows)`` and ``backward()``."""

    def __init__(self, model, features, labels):
        self.params = {name: model.params[name] for name in CLASSIFIER}               # W (K, H), b (K,)
        self.features, self.labels = features, labels                                  # (N, H), (N,)

    def forward(self, rows, training: bool = True) -> StepOutput:
        """Mean softmax cross-entropy of ``features[rows] W^T + b`` (B, K) against ``labels[rows]``."""
        logits, self._linear = linear_forward(self.features[rows], *self.params.values())
        loss, self._loss = cross_entropy_forward(logits, self.labels[rows])
        return StepOutput(float(loss), logits)

    def backward(self) -> dict:
        _, dW, db = linear_backward(cross_entropy_backward(1.0, self._loss), self._linear)
        return dict(zip(CLASSIFIER, (dW, db)))


def train_classifier_first(model, train: EncodedExamples, dev: EncodedExamples, epochs: int, batch_size: int = 32,
                           lr: float = CLASSIFIER_FIRST_LR, seed: int = 0, weight_decay: float = 0.01,
                           warmup_ratio: float = 0.1, eval_batch_size: int = 64, pad_token_id: int = 0,
                           log=lambda message: None) -> dict:
    """Phase 1 (module docstring): train ``classifier.weight`` and ``classifier.bias`` of ``model`` in place, the
    encoder and pooler untouched; on return they hold the epoch with the best dev accuracy (ties: the lower dev
    loss). Returns ``{"epochs", "best_epoch", "dev_accuracy", "dev_loss", "dev_accuracy_by_epoch",
    "dev_loss_by_epoch"}``; ``log`` gets one line. The steps run in the one training loop (:mod:`.loop`),
    unclipped; should they diverge, the classifier is put back as it was before phase 1 (``best_epoch`` 0)."""
    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 1:
        raise FinetuneError(f"classifier_first must be an integer >= 1 (epochs of the classifier alone); "
                            f"got {epochs!r}")
    kind = resolve_problem_type(getattr(model, "problem_type", None), model.num_labels, train.labels)
    if kind != "single_label_classification":
        raise FinetuneError(f"classifier_first needs single-label classification (softmax cross-entropy); this "
                            f"model's problem_type is {kind!r}")
    xp = model.xp
    head = FeatureClassifier(model, pooled_features(model, train, eval_batch_size, pad_token_id),
                             xp.asarray(train.labels))
    dev_head = FeatureClassifier(model, pooled_features(model, dev, eval_batch_size, pad_token_id),
                                 xp.asarray(dev.labels))
    rng = np.random.default_rng([seed, SEED_STREAM])
    total = epochs * -(-len(train) // batch_size)
    warmup = int(round(warmup_ratio * total))
    by_epoch = {"dev_accuracy_by_epoch": [], "dev_loss_by_epoch": []}
    best = {"best_epoch": 0, "dev_accuracy": None, "dev_loss": None,
            "weights": {name: a.copy() for name, a in head.params.items()}}          # before phase 1

    def batches():
        for epoch in range(1, epochs + 1):
            order = rng.permutation(len(train))
            for start in range(0, len(train), batch_size):
                yield {"rows": xp.asarray(order[start:start + batch_size]), "epoch": epoch,
                       "epoch_end": start + batch_size >= len(train)}

    def end_of_epoch(state: LoopState):
        if not state.batch["epoch_end"]:
            return
        out = dev_head.forward(xp.arange(len(dev)))
        dev_loss, dev_accuracy = out.loss, float((out.logits.argmax(axis=1) == dev_head.labels).mean())
        by_epoch["dev_accuracy_by_epoch"].append(dev_accuracy)
        by_epoch["dev_loss_by_epoch"].append(dev_loss)
        if not best["best_epoch"] or (dev_accuracy, -dev_loss) > (best["dev_accuracy"], -best["dev_loss"]):
            best.update(best_epoch=state.batch["epoch"], dev_accuracy=dev_accuracy, dev_loss=dev_loss,
                        weights={name: a.copy() for name, a in head.params.items()})

    optimizer = AdamW(head.params, lr=lr, weight_decay=weight_decay, backend=model.backend)
    run_loop(head, optimizer, batches(), schedule=lambda s: linear_warmup_decay(s, total, warmup, lr),
             total_steps=total, max_grad_norm=math.inf, inputs=lambda batch: {"rows": batch["rows"]},
             callbacks=(end_of_epoch,), progress=False, log=log, advice="Phase 2 starts from the classifier "
             "as it was before phase 1.", kept=lambda state: "the classifier is put back")
    for name, a in best.pop("weights").items():
        head.params[name][...] = a                                                     # the best epoch's classifier
    log(f"classifier first, {epochs} epochs on the frozen encoder's features: dev accuracy "
        f"{float('nan') if best['dev_accuracy'] is None else best['dev_accuracy']:.4f} (epoch {best['best_epoch']})")
    return {"epochs": epochs, **best, **by_epoch}
