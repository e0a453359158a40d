"""Chapter 13: planted wrong answers fail with a message that points at the mistake.

``PLANTED_PARALLEL`` joins ``test_exercises.PLANTED``, where every part of every chapter must have one; the
reference solutions passing and the untouched stubs failing are tested there for all chapters.
"""
from __future__ import annotations

import numpy as np

from bert_from_scratch.exercises import solutions_parallel as S


def _ring_passing_whole_arrays(arrays, send):
    """The naive ring: every array travels all the way round (N - 1 whole arrays sent per rank)."""
    n = len(arrays)
    totals = [np.array(a, dtype=float) for a in arrays]
    moving = [np.array(a, dtype=float) for a in arrays]
    for _ in range(n - 1):
        moving = [send((r - 1) % n, moving[(r - 1) % n]) for r in range(n)]
        totals = [t + m for t, m in zip(totals, moving)]
    return totals


def _ring_without_sending(arrays, send):
    return [np.sum(arrays, axis=0) for _ in arrays]


def _ring_reduce_scatter_only(arrays, send):
    """Forgets the all-gather: each rank holds the full sum of one chunk only."""
    n = len(arrays)
    chunks = [[c.copy() for c in np.array_split(np.asarray(a, dtype=float).reshape(-1), n)] for a in arrays]
    for step in range(n - 1):
        received = [(r, (r - step) % n, send(r, chunks[r][(r - step) % n])) for r in range(n)]
        for r, c, data in received:
            chunks[(r + 1) % n][c] = chunks[(r + 1) % n][c] + data
    for step in range(n - 1):                    # sends the same amount, but never stores what it receives
        for r in range(n):
            send(r, chunks[r][(r + 1 - step) % n])
    return [np.concatenate(chunks[r]).reshape(np.shape(arrays[0])) for r in range(n)]


def _ring_mean(arrays, send):
    return [x / len(arrays) for x in S.ring_allreduce(arrays, send)]


def _weights_all_one(counts):
    return np.ones(len(counts))


def _weights_share_only(counts):
    counts = np.asarray(counts, dtype=float)
    return counts / counts.sum()


PLANTED_PARALLEL = [
    (13, "ring_allreduce", {"ring_allreduce": _ring_passing_whole_arrays}, "a ring allreduce sends"),
    (13, "ring_allreduce", {"ring_allreduce": _ring_without_sending}, "nothing went through send()"),
    (13, "ring_allreduce", {"ring_allreduce": _ring_reduce_scatter_only}, "rank 0's result"),
    (13, "ring_allreduce", {"ring_allreduce": _ring_mean}, "is the mean"),
    (13, "loss_weights", {"loss_weights": _weights_all_one}, "plain average of per-rank means"),
    (13, "loss_weights", {"loss_weights": _weights_share_only}, "multiply by N"),
]


def test_the_naive_ring_gives_the_right_sums_so_only_the_traffic_count_rejects_it():
    """The planted naive ring is a correct allreduce: what the grader rejects it for is its traffic."""
    from bert_from_scratch.exercises.checks_parallel import RingNetwork

    arrays = [np.arange(6.0) * (r + 1) for r in range(3)]
    net = RingNetwork(3)
    out = _ring_passing_whole_arrays(arrays, net.send)
    assert all(np.allclose(o, np.sum(arrays, axis=0)) for o in out)
    assert sum(net.sent) == 3 * 2 * 6 > 2 * 2 * 6          # N(N-1) arrays instead of 2(N-1)
