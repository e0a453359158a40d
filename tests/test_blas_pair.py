"""nn/blas_pair.py: a linear layer's two backward products side by side, on one BLAS thread each.

The pair must give the two products (in either branch), use the helper thread exactly where its conditions hold,
and leave OpenBLAS's thread count as it found it, also when a product fails or after a fork.
"""
import multiprocessing as mp

import numpy as np
import pytest

from bert_from_scratch.nn import blas_pair
from bert_from_scratch.nn.layers import linear_backward, linear_forward

BLAS = blas_pair.numpy_openblas()       # NumPy's OpenBLAS (threadpoolctl), or None under another BLAS


def _big(rng, n=4096, n_out=256, n_in=128):
    """Arrays whose two products each reach MIN_MACS."""
    assert n * n_out * n_in >= blas_pair.MIN_MACS
    x = rng.standard_normal((n, n_in), dtype=np.float32)
    w = rng.standard_normal((n_out, n_in), dtype=np.float32)
    dy = rng.standard_normal((n, n_out), dtype=np.float32)
    return x, w, dy


class _Subclass(np.ndarray):
    """An ndarray subclass (as np.matrix is): its ``@`` may mean something else, so it is never paired."""


@pytest.fixture
def two_threads():
    """OpenBLAS at 2 threads for the test (the CI machine's 2 cores), restored after."""
    if BLAS is None:
        yield None
        return
    before = BLAS.get_num_threads()
    BLAS.set_num_threads(2)
    yield BLAS
    BLAS.set_num_threads(before)


def test_the_pair_gives_both_products_where_it_pairs_and_where_it_does_not(two_threads):
    rng = np.random.default_rng(0)
    x, w, dy = _big(rng)
    before = blas_pair.pairs_run
    dx, dw = blas_pair.matmul_pair(dy, w, dy.T, x)
    np.testing.assert_allclose(dx, dy.astype(np.float64) @ w, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(dw, dy.T.astype(np.float64) @ x, rtol=1e-4, atol=1e-2)
    # where OpenBLAS runs 2 threads the big pair ran side by side; without OpenBLAS, in turn
    assert blas_pair.pairs_run == before + (1 if two_threads is not None else 0)
    small = blas_pair.matmul_pair(dy[:64], w, dy[:64].T, x[:64])             # below MIN_MACS: in turn
    assert blas_pair.pairs_run == before + (1 if two_threads is not None else 0)
    np.testing.assert_allclose(small[1], dy[:64].T.astype(np.float64) @ x[:64], rtol=1e-4, atol=1e-3)


def test_it_pairs_only_numpy_arrays_at_two_threads_and_when_enabled(two_threads, monkeypatch):
    rng = np.random.default_rng(1)
    x, w, dy = _big(rng)
    if two_threads is None:
        assert not blas_pair.side_by_side(dy, w, dy.T, x)
        return
    assert blas_pair.side_by_side(dy, w, dy.T, x)
    assert not blas_pair.side_by_side(dy[:64], w, dy[:64].T, x[:64])                 # too small
    assert not blas_pair.side_by_side(dy.view(_Subclass), w, dy.T, x)               # not a plain ndarray
    two_threads.set_num_threads(1)
    assert not blas_pair.side_by_side(dy, w, dy.T, x)                                # one thread: nothing to share
    two_threads.set_num_threads(2)
    monkeypatch.setattr(blas_pair, "ENABLED", False)
    assert not blas_pair.side_by_side(dy, w, dy.T, x)                                # BERT_FROM_SCRATCH_BLAS_PAIR=0


def test_the_thread_count_is_restored_when_a_product_fails(two_threads):
    rng = np.random.default_rng(2)
    x, w, dy = _big(rng)
    for args in ((dy, w[:, :5].T, dy.T, x), (dy, w, dy.T, x[:7])):   # the first product fails; then the second
        with pytest.raises(ValueError):
            blas_pair.matmul_pair(*args, force=True)
        assert two_threads is None or two_threads.get_num_threads() == 2
    assert blas_pair._lock.acquire(blocking=False)                    # released too
    blas_pair._lock.release()


def test_linear_backward_through_the_pair_equals_the_products_in_turn(two_threads, monkeypatch):
    """The layer's gradients with the pair on and off: equal to float32 rounding (OpenBLAS's one- and two-thread
    splits may sum in another order), and the pair did run where it can."""
    rng = np.random.default_rng(3)
    x, w, dy = _big(rng)
    b = rng.standard_normal(w.shape[0], dtype=np.float32)
    _, cache = linear_forward(x.reshape(32, 128, -1), w, b)
    before = blas_pair.pairs_run
    paired = linear_backward(dy.reshape(32, 128, -1), cache)
    assert blas_pair.pairs_run == before + (1 if two_threads is not None else 0)
    monkeypatch.setattr(blas_pair, "ENABLED", False)
    in_turn = linear_backward(dy.reshape(32, 128, -1), cache)
    assert blas_pair.pairs_run == before + (1 if two_threads is not None else 0)
    for p, q in zip(paired, in_turn):
        assert p.shape == q.shape
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-3)


def _pair_in_child(queue):
    rng = np.random.default_rng(4)
    x, w, dy = _big(rng)
    dx, dw = blas_pair.matmul_pair(dy, w, dy.T, x, force=True)
    queue.put(float(np.abs(dw - dy.T @ x).max()))


def test_a_forked_child_gets_its_own_helper_thread(two_threads):
    """The parent's helper thread does not exist in a forked child: the child must start its own, not hang."""
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    rng = np.random.default_rng(5)
    x, w, dy = _big(rng)
    blas_pair.matmul_pair(dy, w, dy.T, x, force=True)                  # the parent's helper exists now
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_pair_in_child, args=(queue,))
    child.start()
    child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "the pair hung in a forked child"
    assert child.exitcode == 0 and queue.get(timeout=5) < 1e-2
