"""Run by tests/test_distributed.py under ``mpiexec -n N`` (and alone): a tiny pretraining on synthetic data.

    python tests/distributed_driver.py OUT [--dtype float64] [--steps 5] [--batch 6] [--stop-at S] [--resume]
        [--dropout 0.0] [--seed 0] [--fail-rank R --fail-step S --fail-how kill|raise]

Each rank writes its final parameters to ``OUT/params-rank<r>.npz`` and its losses to ``OUT/losses-rank<r>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np


def synthetic_arrays(n=24, T=12, vocab=40, seed=123):
    """Sequences of random ids with ~15% labelled positions (uneven per row) and random NSP labels."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(n, T))
    lengths = rng.integers(T // 2, T + 1, size=n)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    labels = np.where((rng.random((n, T)) < 0.15) & (mask == 1), rng.integers(5, vocab, size=(n, T)), -100)
    labels[:, 1] = ids[:, 1]                                   # at least one labelled position per row
    tt = (np.arange(T)[None, :] >= (lengths // 2)[:, None]).astype(np.int64) * mask
    return {"input_ids": ids, "token_type_ids": tt, "attention_mask": mask, "labels": labels,
            "next_sentence_labels": rng.integers(0, 2, size=n)}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--stop-at", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fail-step", type=int, default=-1)
    p.add_argument("--fail-how", default="kill")
    p.add_argument("--task", default="pretrain", choices=["pretrain", "finetune"])
    p.add_argument("--classifier-first", type=int, default=0)          # finetune: LP-FT's phase 1 epochs
    p.add_argument("--backend", default="numpy", choices=["numpy", "numba"])
    p.add_argument("--freeze-word-embeddings", action="store_true")   # pretrain: the word embeddings never move
    a = p.parse_args(argv)

    from bert_from_scratch.config import BertConfig
    from bert_from_scratch.distributed import get_world
    from bert_from_scratch.model import BertForPreTraining
    from bert_from_scratch.model.heads import WORD_EMBEDDINGS
    from bert_from_scratch.training import loop
    from bert_from_scratch.training.pretraining import pretrain

    world = get_world()
    from bert_from_scratch.distributed.job import DataParallel
    built, make = [], DataParallel.optimizer                  # keep the optimizer the job builds, to measure it
    DataParallel.optimizer = lambda self, *args, **kw: built.append(make(self, *args, **kw)) or built[-1]
    if a.fail_rank == world.rank:                              # a rank that dies in its a.fail_step-th step
        original, calls = loop.train_step, {"n": 0}

        def dying_step(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == a.fail_step:
                if a.fail_how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("planted failure")
            return original(*args, **kwargs)
        loop.train_step = dying_step

    if a.task == "finetune":
        return finetune_main(a, world)
    cfg = BertConfig(vocab_size=40, hidden_size=a.hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * a.hidden, max_position_embeddings=16, hidden_dropout_prob=a.dropout,
                     attention_probs_dropout_prob=a.dropout)
    model = BertForPreTraining(cfg, seed=a.seed, dtype=np.dtype(a.dtype), backend=a.backend)
    train, evals = synthetic_arrays(), synthetic_arrays(n=8, seed=7)
    result = pretrain(model, train, evals, a.out, steps=a.steps, batch_size=a.batch, lr=1e-2, warmup=1, seed=a.seed,
                      resume=a.resume, overwrite=not a.resume, progress=False, plot=False, stop_at=a.stop_at,
                      save_every=1, eval_every=a.steps, log=lambda m: print(m, flush=True),
                      frozen=(WORD_EMBEDDINGS,) if a.freeze_word_embeddings else ())
    out = Path(a.out)
    np.savez(out / f"params-rank{world.rank}.npz", **model.params)
    (out / f"losses-rank{world.rank}.json").write_text(json.dumps(result.losses))
    (out / f"memory-rank{world.rank}.json").write_text(json.dumps({"optimizer_state_bytes": _state_bytes(built[0])}))
    return 0


def _state_bytes(optimizer) -> int:
    """Bytes of AdamW moments this rank held."""
    if hasattr(optimizer, "state_bytes"):
        return optimizer.state_bytes
    return sum(m.nbytes for m in optimizer.exp_avg.values()) * 2


def finetune_main(a, world):
    """A tiny sentence classifier fine-tuned for 2 epochs (tests/test_finetune.py's keyword task)."""
    from test_finetune import keyword_examples, tiny_config          # tests/ is this script's folder

    from bert_from_scratch.data.labeled import ClassificationData
    from bert_from_scratch.data.tokenizer import SPECIAL_TOKENS, Tokenizer
    from bert_from_scratch.model import BertForSequenceClassification
    from bert_from_scratch.training.finetuning import finetune
    from test_finetune import FILLER, NEGATIVE, POSITIVE

    tok = Tokenizer(list(SPECIAL_TOKENS) + POSITIVE + NEGATIVE + FILLER)
    data = ClassificationData(keyword_examples(70, 1), keyword_examples(30, 2), keyword_examples(30, 3),
                              ["negative", "positive"], "keywords")
    model = BertForSequenceClassification(tiny_config(len(tok), dropout=a.dropout), num_labels=2, seed=a.seed,
                                          dtype=np.dtype(a.dtype), backend="numpy")
    result = finetune(model, tok, data, a.out, epochs=2, batch_size=a.batch, lr=1e-3, seed=a.seed, progress=False,
                      max_length=16,
                      plot=False, overwrite=True, patience=2, log=lambda m: print(m, flush=True),
                      classifier_first=a.classifier_first)
    out = Path(a.out)
    np.savez(out / f"params-rank{world.rank}.npz", **model.params)
    (out / f"losses-rank{world.rank}.json").write_text(json.dumps([e["dev_loss"] for e in result.epochs]))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:                          # as the command line's one error path (cli/common.py)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
