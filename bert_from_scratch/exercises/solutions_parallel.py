"""Reference solutions of chapter 13 (data-parallel training); ``solutions.py`` re-exports them."""
from __future__ import annotations

import numpy as np


def ring_allreduce(arrays, send):
    """Reduce-scatter then all-gather over N chunks; rank r sends only to rank (r + 1) % N."""
    n = len(arrays)
    chunks = [[c.copy() for c in np.array_split(np.asarray(a, dtype=float).reshape(-1), n)] for a in arrays]
    for step in range(n - 1):                         # reduce-scatter: rank r sends chunk (r - step) % n
        received = [(r, (r - step) % n, send(r, chunks[r][(r - step) % n])) for r in range(n)]
        for r, c, data in received:
            chunks[(r + 1) % n][c] = chunks[(r + 1) % n][c] + data
    for step in range(n - 1):                         # all-gather: rank r passes on the summed chunk (r + 1 - step)
        received = [(r, (r + 1 - step) % n, send(r, chunks[r][(r + 1 - step) % n])) for r in range(n)]
        for r, c, data in received:
            chunks[(r + 1) % n][c] = data
    shape = np.shape(arrays[0])
    return [np.concatenate(chunks[r]).reshape(shape) for r in range(n)]


def loss_weights(counts):
    """w_r = N n_r / n: the average over ranks of w_r mean_r is sum_r n_r mean_r / n, the global mean."""
    counts = np.asarray(counts, dtype=float)
    total = counts.sum()
    return len(counts) * counts / total if total else np.zeros_like(counts)
