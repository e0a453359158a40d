"""Benchmark: a linear layer's two backward products, one after the other against side by side.

    python -m bert_from_scratch.bench.linear_backward     # or: bert-from-scratch bench linear-backward

For each backward product pair of the default pretraining step (``dx = dy W`` and ``dW = dy^T x`` at the job's
shapes: the encoder's layers at B*T rows, the last layer's at the heads' rows, the tied decoder at the masked rows),
times the two products one after the other, each on all of OpenBLAS's threads, against
``nn/blas_pair.matmul_pair(..., force=True)``, side by side on one thread each, alternating for ``--rounds`` rounds
(median of ``--repeats`` calls per round). Prints the table and whether ``matmul_pair`` takes that pair side by
side by itself (its thread and size conditions). A machine whose NumPy does not use OpenBLAS has nothing to compare.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from ..nn import blas_pair


def step_shapes(B: int = 128, T: int = 64, masked: int = 1229, heads_rows: int = 1357, hidden: int = 128,
                intermediate: int = 512, vocab: int = 8000) -> list[tuple[str, int, int, int]]:
    """(what, rows N, out, in) of each linear layer's backward in the default step (docs/performance.md)."""
    N, H, I = B * T, hidden, intermediate
    return [("Q/K/V, layer 1", N, 3 * H, H), ("attention output", N, H, H), ("FFN in", N, I, H), ("FFN out", N, H, I),
            ("K/V, last layer", N, 2 * H, H), ("FFN in, heads' rows", heads_rows, I, H),
            ("FFN out, heads' rows", heads_rows, H, I), ("decoder (bias in product)", masked, vocab, H + 1)]


def _median_ms(f, repeats: int) -> float:
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def run(shapes=None, repeats: int = 15, rounds: int = 3, seed: int = 0) -> dict:
    """Prints a table; returns {what: (ms one after the other, ms side by side, whether matmul_pair pairs it
    by itself)} (medians over rounds), or {}
    when NumPy's OpenBLAS is not found."""
    if min(repeats, rounds) < 1:
        raise ValueError(f"need repeats >= 1 and rounds >= 1; got repeats {repeats}, rounds {rounds}")
    blas = blas_pair.numpy_openblas()
    if blas is None:
        print("NumPy's BLAS is not OpenBLAS (or threadpoolctl is missing): the pair always runs one after the other")
        return {}
    threads = blas.get_num_threads()
    rng = np.random.default_rng(seed)
    print(f"A linear layer's backward, dx = dy W and dW = dy^T x, float32; OpenBLAS {threads} thread(s); median of "
          f"{repeats} calls per round, {rounds} rounds alternating")
    print(f"{'layer':<27} {'N x out x in':>18} {'in turn ms':>11} {'side by side':>13} {'ratio':>6} {'used':>5}")
    results = {}
    for what, n, n_out, n_in in (shapes or step_shapes()):
        x = rng.standard_normal((n, n_in), dtype=np.float32)
        w = rng.standard_normal((n_out, n_in), dtype=np.float32)
        dy = rng.standard_normal((n, n_out), dtype=np.float32)

        def in_turn():
            return dy @ w, dy.T @ x

        def paired():
            return blas_pair.matmul_pair(dy, w, dy.T, x, force=True)
        times = [(_median_ms(in_turn, repeats), _median_ms(paired, repeats)) for _ in range(rounds)]
        a, b = (statistics.median(t[i] for t in times) for i in (0, 1))
        used = "yes" if blas_pair.side_by_side(dy, w, dy.T, x) else "no"
        print(f"{what:<27} {f'{n} x {n_out} x {n_in}':>18} {a:>11.2f} {b:>13.2f} {b / a:>5.2f}x {used:>5}")
        results[what] = (a, b, used == "yes")
    in_turn_total = sum(a for a, _, _ in results.values())
    as_run = sum(b if used else a for a, b, used in results.values())
    print(f"{'all pairs':<27} {'':>18} {in_turn_total:>11.2f} {as_run:>13.2f} {as_run / in_turn_total:>5.2f}x  "
          f"(side by side where used, in turn elsewhere)")
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bert-from-scratch bench linear-backward", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=15, help="timed calls per round (default 15)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    a = p.parse_args(argv)
    try:
        run(repeats=a.repeats, rounds=a.rounds)
    except ValueError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
