"""Two independent matrix products at once, each on one BLAS thread: a linear layer's backward on 2 cores.

A linear layer's backward makes two products that do not depend on each other (``nn/layers.py``)::

    dx = dy W        (N, out) @ (out, in)  ->  (N, in)
    dW = dy^T x      (out, N) @ (N, in)    ->  (out, in)

One after the other, OpenBLAS splits each product over its threads, which wait for each other at every block of
the product. On a 2-core machine, giving each product a core of its own (one BLAS thread each, the second product
on a helper thread: NumPy releases the GIL inside ``matmul``) ran the default pretraining step's pairs 0.88x-1.02x
of the time, 0.95x over the step's six pairs: 2-4 ms of a ~185 ms step on the 2-vCPU VM
(``bert-from-scratch bench linear-backward``; docs/performance.md).

:func:`matmul_pair` does that only where it was measured to help: NumPy arrays, NumPy's own OpenBLAS found (through
``threadpoolctl``) and running exactly 2 threads, and both products of at least :data:`MIN_MACS` multiply-adds
(smaller ones lose more to the hand-over than they gain). Everywhere else (CuPy arrays, another BLAS, 1 thread, as
in an MPI rank of one thread, or more than 2) the products run one after the other, as before. The results are
OpenBLAS's one-thread products: for some shapes its two-thread split sums in another order, so a weight gradient
can differ from the one-after-the-other form in its last bits, never by more than float rounding.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

#: ``BERT_FROM_SCRATCH_BLAS_PAIR=0`` turns it off (every pair one after the other), to compare or to rule it out
ENABLED = os.environ.get("BERT_FROM_SCRATCH_BLAS_PAIR", "1") != "0"

#: the smallest product (m * k * n multiply-adds) given a helper thread: the hand-over costs ~50 us, and the
#: default step's pairs below 2^27 (the last layer's at the heads' 1,357 rows) came out even on the 2-vCPU VM
MIN_MACS = 1 << 27

_lock = threading.Lock()      # one pair at a time: the BLAS thread count is a process-wide setting
_state = {"pid": None, "executor": None, "blas": None}
#: how many pairs ran side by side in this process (tests read it)
pairs_run = 0


def _numpy_openblas():
    """threadpoolctl's controller of the OpenBLAS that NumPy's ``matmul`` calls, or None (another BLAS, or
    threadpoolctl missing). SciPy may load an OpenBLAS of its own; the one inside NumPy's package is NumPy's."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    site = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    ours = os.path.join(site, "numpy")          # numpy.libs/ (Linux, Windows wheels), numpy/.dylibs/ (macOS)
    for lib in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        if os.path.abspath(lib.filepath).startswith(ours):
            return lib
    return None


def _helper():
    """(the helper thread's executor, NumPy's OpenBLAS controller or None), made once per process (a forked child
    gets its own: the parent's helper thread does not exist there)."""
    if _state["pid"] != os.getpid():
        _state.update(pid=os.getpid(), blas=_numpy_openblas(),
                      executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix="blas-pair"))
    return _state["executor"], _state["blas"]


def numpy_openblas():
    """threadpoolctl's controller of NumPy's OpenBLAS (found once per process), or None."""
    return _helper()[1]


def side_by_side(a1, b1, a2, b2) -> bool:
    """Whether :func:`matmul_pair` would run these two products side by side here."""
    if not ENABLED or not all(type(a) is np.ndarray for a in (a1, b1, a2, b2)):
        return False
    if a1.ndim != 2 or b1.ndim != 2 or a2.ndim != 2 or b2.ndim != 2:
        return False
    if min(a1.shape[0] * a1.shape[1] * b1.shape[1], a2.shape[0] * a2.shape[1] * b2.shape[1]) < MIN_MACS:
        return False
    blas = _helper()[1]
    return blas is not None and blas.get_num_threads() == 2


def matmul_pair(a1, b1, a2, b2, force: bool = False):
    """(a1 @ b1, a2 @ b2): side by side on one BLAS thread each where :func:`side_by_side` says so (or, with
    ``force``, wherever NumPy's OpenBLAS is found: the benchmark), else one after the other."""
    global pairs_run
    runs_paired = side_by_side(a1, b1, a2, b2) or (force and _helper()[1] is not None)
    if not runs_paired or not _lock.acquire(blocking=False):
        return a1 @ b1, a2 @ b2
    executor, blas = _helper()
    threads = blas.get_num_threads()
    try:
        blas.set_num_threads(1)
        second = executor.submit(np.matmul, a2, b2)     # on the helper thread
        try:
            first = a1 @ b1                             # on this one, meanwhile
        finally:
            wait([second])                              # never leave it running on one thread
        result = first, second.result()
        pairs_run += 1
        return result
    finally:
        blas.set_num_threads(threads)
        _lock.release()
