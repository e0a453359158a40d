"""Benchmark: a fine-tuning step with the last layer at the heads' rows against every row.

    python -m bert_from_scratch.bench.heads_rows              # or: bert-from-scratch bench heads-rows

One optimizer step (``training.loop.train_step``: forward, backward, clipping, AdamW) of
``BertForSequenceClassification`` at the default
checkpoint's size (2 layers x hidden 128, vocab 8,000) on a Rotten-Tomatoes-shaped batch (B=32, T=64, the
README's ``finetune`` defaults), in one process, the two settings of ``last_layer_at_heads_rows`` alternating
for ``--rounds`` rounds (a time per round each, median of ``--repeats`` steps after warm-up): True runs the
last layer's output dense and FFN at the [CLS] rows only, which is all the classifier reads; False at every
row. The pretraining step's comparison is in ``bench train-step --case default-step``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from ..cli.process import keep_freed_memory
from ..model import BertForSequenceClassification
from ..training.optim import AdamW


def _step_times(at_rows: bool, cfg, batch: dict, repeats: int, warmup: int) -> list[float]:
    """Seconds per step of ``training.loop.train_step`` (the one step every job runs), after ``warmup`` steps."""
    from ..training.loop import train_step
    model = BertForSequenceClassification(cfg, num_labels=2, seed=0)
    model.last_layer_at_heads_rows = at_rows
    optimizer = AdamW(model.params, lr=1e-4, weight_decay=0.01, backend=model.backend)
    times = []
    for _ in range(warmup + repeats):
        t = time.perf_counter()
        if train_step(model, batch, optimizer, 1e-4, max_grad_norm=1.0).diverged:
            raise RuntimeError("the benchmark's fine-tuning step diverged")
        times.append(time.perf_counter() - t)
    return times[warmup:]


def run(B: int = 32, T: int = 64, repeats: int = 20, rounds: int = 3, warmup: int = 3, vocab_size: int = 8000,
        seed: int = 0) -> dict:
    """Times both settings, alternating; prints a table and returns {setting: [ms per round]}."""
    if min(B, repeats, rounds) < 1 or T < 2 or warmup < 0:
        raise ValueError(f"need batch >= 1, seq >= 2, repeats >= 1, rounds >= 1, warmup >= 0; got batch {B}, "
                         f"seq {T}, repeats {repeats}, rounds {rounds}, warmup {warmup}")
    from ..training.pretrain_job import model_config
    keep_freed_memory()
    cfg = model_config("tiny", vocab_size, T)
    r = np.random.default_rng(seed)
    lengths = r.integers(T // 2, T + 1, B)                                   # padded, as real reviews are
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)        # (B, T)
    ids = r.integers(5, vocab_size, (B, T)) * mask
    batch = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask,
             "labels": r.integers(0, 2, B)}
    ms = {True: [], False: []}
    for _ in range(rounds):
        for at_rows in (False, True):
            ms[at_rows].append(1e3 * statistics.median(_step_times(at_rows, cfg, batch, repeats, warmup)))
    print(f"A fine-tuning step (train_step: BertForSequenceClassification, forward, backward, clip, AdamW), L=2, H=128, "
          f"V={vocab_size}, B={B}, T={T}, float32, CPU; median of {repeats} steps per round, {rounds} rounds "
          f"alternating")
    print(f"{'last layer':<28} {'ms/step per round':<28} {'median':>8}")
    for at_rows, label in ((False, "at every row"), (True, "at the [CLS] rows only")):
        per_round = " / ".join(f"{m:.1f}" for m in ms[at_rows])
        print(f"{label:<28} {per_round:<28} {statistics.median(ms[at_rows]):>8.1f}")
    print(f"ratio (median): {statistics.median(ms[True]) / statistics.median(ms[False]):.2f}x")
    return ms


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bert-from-scratch bench heads-rows", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20, help="timed steps per round (default 20)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    a = p.parse_args(argv)
    try:
        run(a.batch, a.seq, a.repeats, a.rounds)
    except ValueError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
