"""Checks of chapter 13 (data-parallel training): the ring allreduce and the per-rank loss weights.

The ring is graded through a simulated network: ``send(r, chunk)`` is the only way data may move between
the in-process "ranks", it only reaches rank (r + 1) % N, and it counts the values sent. The results must be
every rank's sum, and the traffic the ring's 2(N - 1)/N of the array per rank (not the N - 1 whole arrays of
passing everything around).
"""
from __future__ import annotations

import numpy as np

from .grader import Wrong, expect_close, fixed_rng, frozen, get_function


class RingNetwork:
    """N ranks on a ring: ``send(r, chunk)`` delivers a copy of ``chunk`` to rank (r + 1) % N and counts it."""

    def __init__(self, n: int):
        self.n = n
        self.sent = [0] * n                       # values sent by each rank

    def send(self, rank, chunk):
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < self.n:
            raise Wrong(f"send(rank={rank!r}, ...): rank must be an int in [0, {self.n})")
        data = np.array(chunk, dtype=float, copy=True)
        self.sent[int(rank)] += data.size
        return data


def check_ring_allreduce(module):
    fn = get_function(module, "ring_allreduce")
    rng = fixed_rng(13)
    for n, shape in ((1, (4,)), (2, (6,)), (3, (7,)), (4, (2, 5)), (5, (3, 4))):
        arrays = [rng.normal(size=shape) for _ in range(n)]
        want = np.sum(arrays, axis=0)
        net = RingNetwork(n)
        got = fn(list(frozen(*arrays)) if n > 1 else [frozen(*arrays)], net.send)
        if not isinstance(got, (list, tuple)) or len(got) != n:
            raise Wrong(f"ring_allreduce with {n} ranks must return a list of {n} arrays; got {type(got).__name__}")
        for r, g in enumerate(got):
            g = np.asarray(g)
            if g.shape == want.shape and n > 1 and np.allclose(g, want / n):
                raise Wrong(f"rank {r}'s result is the mean; an allreduce SUMS (averaging is the caller's division)")
            expect_close(f"rank {r}'s result ({n} ranks, shape {shape})", g, want, rtol=1e-12, atol=1e-12)
        size, total = want.size, sum(net.sent)
        ring = 2 * (n - 1) * size                 # every rank: N - 1 chunks twice; all ranks: 2 (N - 1) arrays
        if n > 1 and total == 0:
            raise Wrong("nothing went through send(): every value a rank gets from another must be sent")
        if total > ring:
            raise Wrong(f"with {n} ranks and {size} values each, {total} values were sent; a ring allreduce sends "
                        f"{ring} (each rank 2(N-1)/N of its array): split into N chunks, reduce-scatter, all-gather")
        if total < ring:
            raise Wrong(f"only {total} values were sent ({ring} expected): some rank used data it was never sent")
    return "every rank gets the sum; 2(N-1)/N of the array sent per rank, for N = 1 ... 5"


def check_loss_weights(module):
    fn = get_function(module, "loss_weights")
    rng = fixed_rng(7)
    for counts in ([5, 5], [3, 9, 4], [0, 6, 2, 1], [1]):
        got = np.asarray(fn(list(counts)), dtype=float)
        n = np.asarray(counts, dtype=float)
        want = len(counts) * n / n.sum()
        if got.shape == want.shape and np.allclose(got, 1.0) and not np.allclose(want, 1.0):
            raise Wrong(f"loss_weights({counts}) = 1 for every rank: the plain average of per-rank means is not "
                        f"the mean over all items when the counts differ")
        if got.shape == want.shape and np.allclose(got * len(counts), want) and len(counts) > 1:
            raise Wrong(f"loss_weights({counts}) = n_r / n: the AVERAGE over ranks divides by N again; "
                        f"multiply by N")
        expect_close(f"loss_weights({counts})", got, want, rtol=1e-12, atol=0)
        means = rng.normal(size=len(counts))                      # what the weights are for
        global_mean = float((n * means).sum() / n.sum())
        expect_close(f"mean of w_r * mean_r for counts {counts}", float(np.mean(got * means)), global_mean,
                     rtol=1e-12, atol=1e-15)
    return "N n_r / n: the average over ranks of weighted per-rank means is the global mean (uneven counts too)"
