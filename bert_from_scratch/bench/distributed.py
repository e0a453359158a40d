"""Benchmark: data-parallel pretraining steps on 1, 2, 4 ... MPI ranks, the machine's cores split between them.

    bert-from-scratch bench distributed                       # 1 and 2 ranks on this machine's cores
    bert-from-scratch bench distributed --ranks 1,2,4,8       # a 16-core host

For each rank count N it launches ``mpiexec -n N`` (the ``distributed`` extra) with ``cores / N`` threads
per rank (OMP/OpenBLAS/Numba), the same global batch (strong scaling), and times training steps through the
one training loop, first with the gradient reductions after the backward, then overlapped with it
(``distributed/gradients.py``). Printed per N:

- tokens/s of the global batch (overlap on), and the scaling efficiency: tokens/s(N) / tokens/s(1) -- the
  same cores, so 100% means data parallelism costs nothing next to one process threading over all of them;
- communication: seconds per step in (or waiting for) the gradient reductions, without overlap;
- hidden by overlap: (step time without overlap - with) / communication time;
- bytes each rank hands to Allreduce per step (the ring moves 2(N-1)/N of that per rank).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: the benchmark's model: 4 layers, hidden 256 ("mini"), vocabulary 8000, T = 64
MODEL = dict(vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
             max_position_embeddings=64)


def synthetic_batch(n: int, T: int, vocab: int, seed: int = 0) -> dict:
    """A pretraining batch of random ids with ~15% labelled positions."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(n, T))
    labels = np.where(rng.random((n, T)) < 0.15, rng.integers(5, vocab, size=(n, T)), -100)
    return {"input_ids": ids, "token_type_ids": np.zeros((n, T), np.int64), "attention_mask": np.ones((n, T), np.int64),
            "labels": labels, "next_sentence_label": rng.integers(0, 2, size=n)}


def worker(batch: int, seq: int, steps: int, warmup: int, layers: int, hidden: int, backend: str = "auto") -> dict:
    """One rank: time ``steps`` steps without overlap, then with it. Returns rank 0's numbers."""
    from ..config import BertConfig
    from ..distributed.job import DataParallel
    from ..model import BertForPreTraining
    from ..training.loop import run_loop
    from ..training.optim import AdamW

    cfg = BertConfig(**{**MODEL, "num_hidden_layers": layers, "hidden_size": hidden,
                        "intermediate_size": 4 * hidden, "num_attention_heads": max(1, hidden // 64)})
    out = {}
    for overlap in (False, True):
        dp = DataParallel(overlap=overlap)
        model = BertForPreTraining(cfg, seed=0, backend=backend)
        optimizer = AdamW(model.params, lr=1e-4, backend=model.backend)
        lo, hi = dp.bounds(batch) if dp.size > 1 else (0, batch)
        data = {k: v[lo:hi] for k, v in synthetic_batch(batch, seq, cfg.vocab_size).items()}
        sync = dp.sync_for(model)
        run_loop(model, optimizer, (data for _ in range(warmup)), schedule=lambda s: 1e-4, total_steps=warmup,
                 progress=False, sync=sync)
        comm0 = sync.seconds if sync else 0.0
        dp.world.barrier()
        t0 = time.perf_counter()
        run_loop(model, optimizer, (data for _ in range(steps)), schedule=lambda s: 1e-4, total_steps=steps,
                 progress=False, sync=sync)
        dp.world.barrier()
        per_step = (time.perf_counter() - t0) / steps
        out["overlap" if overlap else "blocking"] = {
            "step_s": per_step, "comm_s": ((sync.seconds - comm0) / steps) if sync else 0.0,
            "bytes": sync.bytes_reduced if sync else 0, "buckets": len(sync.buckets) if sync else 0}
    out.update(ranks=dp.size, tokens_per_step=batch * seq)
    return out


def launch(n: int, cores: int, a) -> dict:
    """``mpiexec -n n`` this module as workers with ``cores // n`` threads each; rank 0's JSON line."""
    here = Path(sys.executable).parent / "mpiexec"          # the mpich wheel's launcher, next to python
    mpiexec = str(here) if here.exists() else (shutil.which("mpiexec") or "mpiexec")
    threads = str(max(1, cores // n))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads}
    cmd = [mpiexec, "-n", str(n), sys.executable, "-m", "bert_from_scratch.bench.distributed", "--worker",
           "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--layers", str(a.layers), "--hidden", str(a.hidden), "--backend", a.backend]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"mpiexec -n {n} failed: {p.stderr.strip().splitlines()[-1:]}")
    return json.loads([line for line in p.stdout.splitlines() if line.startswith("{")][-1])


def table(rows: list[dict]) -> str:
    base = rows[0]["tokens_per_step"] / rows[0]["overlap"]["step_s"]
    lines = [f"{'ranks':>5} {'tokens/s':>9} {'efficiency':>10} {'step s':>8} {'no-overlap s':>12} "
             f"{'comm s/step':>11} {'hidden':>7} {'MB reduced/step':>15} {'buckets':>7}"]
    for r in rows:
        on, off = r["overlap"], r["blocking"]
        tps = r["tokens_per_step"] / on["step_s"]
        hidden = (off["step_s"] - on["step_s"]) / off["comm_s"] if off["comm_s"] > 0 else float("nan")
        lines.append(f"{r['ranks']:>5} {tps:>9.0f} {tps / base:>10.1%} {on['step_s']:>8.3f} {off['step_s']:>12.3f} "
                     f"{off['comm_s']:>11.4f} {hidden:>7.0%} {r['overlap']['bytes'] / 1e6:>15.2f} "
                     f"{r['overlap']['buckets']:>7}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts (default 1,2)")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="cores split between the ranks")
    p.add_argument("--batch", type=int, default=32, help="global batch (sequences per step)")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (Numba compile, buffers)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--backend", default="auto", choices=["auto", "numpy", "numba"], help="the model's backend")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        from ..distributed.world import get_world

        result = worker(a.batch, a.seq, a.steps, a.warmup, a.layers, a.hidden, a.backend)
        if get_world().is_root:
            print(json.dumps(result), flush=True)
        return 0
    from ..distributed.world import INSTALL_HINT

    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise ValueError(f"bench distributed needs mpi4py and mpiexec: {INSTALL_HINT}") from None
    ranks = [int(x) for x in a.ranks.split(",")]
    if ranks[0] != 1:
        ranks = [1] + ranks
    print(f"data-parallel pretraining steps: {a.layers} layers, hidden {a.hidden}, global batch {a.batch} x "
          f"{a.seq} tokens, {a.cores} cores split between the ranks; efficiency = tokens/s(N) / tokens/s(1)")
    rows = [launch(n, a.cores, a) for n in ranks]
    print(table(rows))
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
