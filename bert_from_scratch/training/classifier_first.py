r"""Linear probing, then fine-tuning (LP-FT): the classifier trained alone on frozen features first.

Fine-tuning starts from a random classifier. Its first gradients are noise, and they flow into the
pretrained encoder and move it before the classifier has learned what to read (Kumar et al. 2022,
"Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution"). LP-FT fits the
classifier alone on the frozen encoder's features first, then fine-tunes every weight from there::

    phase 1   pooled = pooler(encoder(x))        (B, H)   frozen, no dropout: computed once per example
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

import numpy as np

from ..data.classification import EncodedExamples, FinetuneError, collate
from ..model.task_heads import resolve_problem_type
from ..nn.layers import cross_entropy_backward, cross_entropy_forward, linear_backward, linear_forward
from .optim import AdamW, linear_warmup_decay

CLASSIFIER = ("classifier.weight", "classifier.bias")
CLASSIFIER_FIRST_LR = 3e-3          # a linear model on fixed features: larger steps than fine-tuning's
SEED_STREAM = 1                     # phase 1's batch order: np.random.default_rng([seed, SEED_STREAM])


def pooled_features(model, encoded: EncodedExamples, batch_size: int = 64, pad_token_id: int = 0):
    """The pooler's output for every example, (N, H) on the model's device, in the examples' order.

    No dropout; batches in length order (less padding), as :func:`.finetuning.evaluate_classifier` runs them."""
    xp = model.xp
    order = np.argsort(encoded.lengths, kind="stable")
    out = xp.empty((len(encoded), model.config.hidden_size), dtype=model.dtype)      # (N, H)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate(encoded, idx, pad_token_id)
        pooled = model.encode(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]).pooler_output
        out[xp.asarray(idx)] = pooled                                                   # (b, H)
    return out


def _loss_and_accuracy(features, labels, weight, bias) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``features (N, H) @ weight.T + bias`` against ``labels (N,)``."""
    logits, _ = linear_forward(features, weight, bias)                                # (N, K)
    loss, _ = cross_entropy_forward(logits, labels)
    return float(loss), float((logits.argmax(axis=1) == labels).mean())


def train_classifier_first(model, train: EncodedExamples, dev: EncodedExamples, epochs: int, batch_size: int = 32,
                           lr: float = CLASSIFIER_FIRST_LR, seed: int = 0, weight_decay: float = 0.01,
                           warmup_ratio: float = 0.1, eval_batch_size: int = 64, pad_token_id: int = 0,
                           log=lambda message: None) -> dict:
    """Phase 1 (module docstring): train ``classifier.weight`` and ``classifier.bias`` of ``model`` in place, the
    encoder and pooler untouched; on return they hold the epoch with the best dev accuracy (ties: the lower dev
    loss). Returns ``{"epochs", "best_epoch", "dev_accuracy", "dev_loss", "dev_accuracy_by_epoch",
    "dev_loss_by_epoch"}``; ``log`` gets one line."""
    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 1:
        raise FinetuneError(f"classifier_first must be an integer >= 1 (epochs of the classifier alone); "
                            f"got {epochs!r}")
    kind = resolve_problem_type(getattr(model, "problem_type", None), model.num_labels, train.labels)
    if kind != "single_label_classification":
        raise FinetuneError(f"classifier_first needs single-label classification (softmax cross-entropy); this "
                            f"model's problem_type is {kind!r}")
    xp = model.xp
    x_train = pooled_features(model, train, eval_batch_size, pad_token_id)             # (N, H)
    x_dev = pooled_features(model, dev, eval_batch_size, pad_token_id)                 # (N_dev, H)
    y_train, y_dev = xp.asarray(train.labels), xp.asarray(dev.labels)                  # (N,), (N_dev,)
    head = {name: model.params[name] for name in CLASSIFIER}                           # the model's own arrays
    W, b = head["classifier.weight"], head["classifier.bias"]                          # (K, H), (K,)
    optimizer = AdamW(head, lr=lr, weight_decay=weight_decay, backend=model.backend)
    rng = np.random.default_rng([seed, SEED_STREAM])
    steps_per_epoch = -(-len(train) // batch_size)
    total = epochs * steps_per_epoch
    warmup = int(round(warmup_ratio * total))
    best, by_epoch, step = None, {"dev_accuracy_by_epoch": [], "dev_loss_by_epoch": []}, 0
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(train))
        for start in range(0, len(train), batch_size):
            idx = xp.asarray(order[start:start + batch_size])
            logits, c_lin = linear_forward(x_train[idx], W, b)                         # (B, K)
            _, c_loss = cross_entropy_forward(logits, y_train[idx])
            _, dW, db = linear_backward(cross_entropy_backward(1.0, c_loss), c_lin)
            optimizer.step({"classifier.weight": dW, "classifier.bias": db},
                           lr=linear_warmup_decay(step, total, warmup, lr))
            step += 1
        dev_loss, dev_accuracy = _loss_and_accuracy(x_dev, y_dev, W, b)
        by_epoch["dev_accuracy_by_epoch"].append(dev_accuracy)
        by_epoch["dev_loss_by_epoch"].append(dev_loss)
        if best is None or (dev_accuracy, -dev_loss) > (best["dev_accuracy"], -best["dev_loss"]):
            best = {"best_epoch": epoch, "dev_accuracy": dev_accuracy, "dev_loss": dev_loss,
                    "weights": {name: a.copy() for name, a in head.items()}}
    for name, a in best.pop("weights").items():
        head[name][...] = a                                                            # the best epoch's classifier
    log(f"classifier first, {epochs} epochs on the frozen encoder's features: dev accuracy "
        f"{best['dev_accuracy']:.4f} (epoch {best['best_epoch']})")
    return {"epochs": epochs, **best, **by_epoch}
