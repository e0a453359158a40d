"""Chapter 13 exercises: the ring allreduce, and the per-rank loss weights that make data parallelism exact.

Check with:  bert-from-scratch check 13
The grader calls your functions on READ-ONLY arrays (copy before modifying) and counts what you send.
"""
import numpy as np  # noqa: F401


def ring_allreduce(arrays, send):
    """Sum N arrays held by N ranks, the way a ring allreduce does; return each rank's copy of the sum.

    arrays: list of N arrays of one shape, ``arrays[r]`` held by rank r (read-only).
    send(r, chunk): the only way data moves: rank r sends ``chunk`` (an array) to rank (r + 1) % N; it returns
    the copy that rank (r + 1) % N receives.
    Split each flattened array into N chunks (``np.array_split``). Reduce-scatter: in N - 1 steps every rank
    sends one chunk to its right neighbour, which adds it to its own, until rank r holds the full sum of chunk
    (r + 1) % N. All-gather: N - 1 more steps pass the summed chunks around. Each rank sends 2(N - 1) chunks,
    about 2(N - 1)/N of the array, whatever N is. Returns a list of N arrays of the input shape.
    """
    raise NotImplementedError("chapter 13: ring_allreduce")


def loss_weights(counts):
    """Weights w_r of each rank's mean loss so that the AVERAGE over ranks of w_r * grad(mean_r) is the
    gradient of the mean over all items. counts: n_r, the number of items (e.g. masked tokens) rank r
    averaged over (some may be 0). Returns a float array of length N: w_r = N n_r / n with n = sum(counts)."""
    raise NotImplementedError("chapter 13: loss_weights")
