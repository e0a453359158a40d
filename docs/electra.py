"""Replaced-token detection (ELECTRA, Clark et al. 2020) instead of MLM + NSP: the screen behind docs/results.md's
section "Replaced-token detection (ELECTRA)". An experiment, not a feature: ``pretrain`` is what the README documents.

ELECTRA's claim is that a small encoder learns more per step from a per-token task than from predicting the 15% of
tokens that are masked. Each step here:

1. a small **generator** (``BertForMaskedLM``, ``--generator-layers`` layers at the job's width) predicts the masked
   pieces of the job's batch (its MLM loss; its own AdamW);
2. one piece per masked position is **sampled** from the generator's softmax (Gumbel-max; not differentiated) and
   put in place of the mask (:func:`replaced_tokens`);
3. the **discriminator** (the job's 2 x 128 encoder with ``BertForTokenClassification``'s per-token head, 2 classes)
   says of every real token whether it is the original or a replacement (mean cross-entropy; its own AdamW). A
   sample equal to the original counts as original, as in the paper.

Each model trains through the package's one step (``training/loop.train_step``: clipping at 1, AdamW, the NaN
checks). Both read the main job's data and word embeddings (the count vectors, frozen) on the corpus it was measured
with, ``GENERAL_MIX`` (the main job's until 2026-12-07; ``--corpus`` for another), so the two differ from that main
job in the objective alone. No NSP; the discriminator's encoder is saved in a ``BertForPreTraining`` folder (pooler
and heads at BERT's initialisation) that ``transfer --checkpoint OUT`` and ``finetune --init OUT`` read:

    python docs/electra.py OUT [--steps 1100] [--generator-layers 1] [--lr 2e-3]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bert_from_scratch.constants import IGNORE_INDEX
from bert_from_scratch.model.heads import WORD_EMBEDDINGS          # the parameter's one name
from bert_from_scratch.training.presets import BASE, GENERAL_MIX   # measured on the mix (its docs)


def replaced_tokens(input_ids, labels, attention_mask, sampled):
    """The discriminator's input and targets.

    input_ids, labels, attention_mask: (B, T), the job's batch (``labels`` -100 where nothing is masked);
    sampled: (N,) the generator's pieces at the N masked positions, in the row-major order of
    ``nonzero(labels != -100)``. Returns (ids (B, T): the masked positions hold ``sampled``; targets (B, T): 1 where
    a sample differs from the original piece, 0 at every other real token, -100 at padding)."""
    where = np.nonzero(labels != IGNORE_INDEX)                                   # 2 x (N,)
    ids = input_ids.copy()
    ids[where] = sampled
    targets = np.where(attention_mask == 1, 0, IGNORE_INDEX).astype(np.int64)
    targets[where] = (sampled != labels[where]).astype(np.int64)
    return ids, targets


def gumbel_sample(logits, rng) -> np.ndarray:
    """(N, V) logits -> (N,) one piece per row drawn from softmax(logits) (Gumbel-max)."""
    noise = -np.log(-np.log(rng.random(logits.shape)))
    return np.argmax(np.asarray(logits, dtype=np.float64) + noise, axis=-1)


def _stop_if_diverged(result, what: str, step: int) -> None:
    """A NaN/inf loss, gradient or update (``train_step`` found it): one line, the step and the model named."""
    if result.diverged:
        raise ValueError(f"step {step}: the {what} diverged: {result.what_diverged()}; lower --lr")


def pretrain_electra(out, corpus=GENERAL_MIX, steps=BASE["steps"], batch_size=BASE["batch_size"], lr=BASE["lr"],
                     generator_layers=1, vocab_size=BASE["vocab_size"], seq_len=BASE["seq_len"], size=BASE["size"],
                     seed=0, log=print) -> dict:
    """Train generator and discriminator for ``steps`` (warmup a tenth, linear decay, clipping at 1 each); write
    ``out/checkpoint``; return the last step's numbers."""
    from bert_from_scratch.files import atomic_dir, check_writable
    from bert_from_scratch.model import BertForPreTraining
    from bert_from_scratch.model.task_models import BertForMaskedLM, BertForTokenClassification
    from bert_from_scratch.training.loop import train_step
    from bert_from_scratch.training.optim import AdamW, linear_warmup_decay
    from bert_from_scratch.training.pretrain_job import applicable_upweight, model_config, prepare_pretraining_data
    from bert_from_scratch.training.pretraining import take_batch

    if not (isinstance(steps, int) and steps >= 1 and isinstance(generator_layers, int) and generator_layers >= 1
            and lr > 0):
        raise ValueError(f"steps and generator layers must be positive integers and lr positive; got {steps}, "
                         f"{generator_layers}, {lr}")
    folder = Path(out) / "checkpoint"
    if folder.exists():                                            # never over an earlier result
        raise ValueError(f"{folder} exists; choose a new folder")
    check_writable(out)                                            # before minutes of training, not after
    data = prepare_pretraining_data(corpus, vocab_size, None, seq_len, dupe_factor=BASE["dupe_factor"], seed=seed,
                                    log=log, count_vectors_dim=model_config(size, 1, seq_len).hidden_size,
                                    init_std=BASE["word_embeddings_std"], count_window=BASE["count_window"],
                                    count_upweight=applicable_upweight(BASE["count_upweight"], corpus))
    cfg = model_config(size, len(data.tokenizer), seq_len)
    generator = BertForMaskedLM(model_config(size, len(data.tokenizer), seq_len, num_hidden_layers=generator_layers),
                                seed=seed + 1)
    discriminator = BertForTokenClassification(cfg, num_labels=2, seed=seed)
    models = (generator, discriminator)
    optimizers = [AdamW(m.params, lr=lr, weight_decay=0.01, frozen=(WORD_EMBEDDINGS,)) for m in models]
    for m in models:
        m.params[WORD_EMBEDDINGS][...] = data.word_vectors
    train, n = data.train, data.train["input_ids"].shape[0]
    order, sample_rng = np.random.default_rng(seed), np.random.default_rng(seed + 2)
    perm, at, t0, last = order.permutation(n), 0, time.time(), {}
    for step in range(steps):
        if at + batch_size > n:
            perm, at = order.permutation(n), 0
        b = take_batch(train, perm[at:at + batch_size], np)
        at += batch_size
        step_lr = linear_warmup_decay(step, steps, max(1, steps // 10), lr)
        inputs = {k: b[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
        g = train_step(generator, {**inputs, "labels": b["labels"]}, optimizers[0], step_lr, 1.0)  # the one step
        _stop_if_diverged(g, "generator", step)
        sampled = gumbel_sample(g.output.logits, sample_rng)                  # (N,) from the forward before the update
        ids, targets = replaced_tokens(b["input_ids"], b["labels"], b["attention_mask"], sampled)
        d = train_step(discriminator, {**inputs, "input_ids": ids, "labels": targets}, optimizers[1], step_lr, 1.0)
        _stop_if_diverged(d, "discriminator", step)
        real = targets != IGNORE_INDEX
        last = {"step": step + 1, "generator_loss": g.loss, "discriminator_loss": d.loss,
                "replaced_share": float(targets[real].mean()),
                "discriminator_accuracy": float((np.argmax(d.output.logits, -1)[real] == targets[real]).mean())}
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step + 1}/{steps}: generator {g.loss:.3f}, discriminator {d.loss:.4f} (accuracy "
                f"{last['discriminator_accuracy']:.4f}, {last['replaced_share']:.3f} replaced), "
                f"{time.time() - t0:.0f} s")
    encoder = BertForPreTraining(cfg, seed=seed)                   # pooler and pretraining heads: BERT's init
    for name, value in discriminator.params.items():
        if name in encoder.params:
            encoder.params[name][...] = value
    with atomic_dir(folder) as tmp:                                # a crash never leaves half a checkpoint
        encoder.save_pretrained(tmp)
        data.tokenizer.save_pretrained(tmp, model_max_length=seq_len)
    return last


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=BASE["steps"])
    p.add_argument("--generator-layers", type=int, default=1)
    p.add_argument("--lr", type=float, default=BASE["lr"])
    p.add_argument("--corpus", default=GENERAL_MIX)
    a = p.parse_args(argv)
    t = time.time()
    try:
        last = pretrain_electra(a.out, corpus=a.corpus, steps=a.steps, lr=a.lr, generator_layers=a.generator_layers)
    except (ValueError, OSError) as e:                   # a folder in the way, a bad corpus: one line, no traceback
        raise SystemExit(f"error: {e}") from None
    print(f"{a.out}/checkpoint ({time.time() - t:.0f} s): {last}")


if __name__ == "__main__":
    from bert_from_scratch.cli.process import keep_freed_memory

    keep_freed_memory()                                  # glibc keeps freed memory, as the package's commands do
    main()
