"""Thread settings the package makes when it is imported, before NumPy and Numba start their thread pools.

Each is a default: a value the user has set in the environment wins. It only takes effect when this package is
imported before NumPy (OpenBLAS reads its variables when NumPy loads it; Numba when it is imported), as the
command line does. This module imports nothing but ``os`` for that reason. Measurements: docs/performance.md.

- ``OMP_WAIT_POLICY=PASSIVE``: Numba's parallel kernels run on GNU OpenMP threads, which by default busy-wait
  after each kernel; on a 2-core machine they then take the cores that OpenBLAS's matmul threads need next.
  Letting them sleep made the tiny model's training step (B=128, T=64) 35% faster: 0.42 -> 0.28 s.
- ``OPENBLAS_THREAD_TIMEOUT=4``: OpenBLAS's worker thread does the same after each matmul (up to 2^28 cycles by
  default), on the core Numba's second thread needs for the kernel that follows: in the default training step the
  Numba kernels ran about twice as fast with 2^4 cycles, the matmuls unchanged.
- Under an MPI launcher (``mpiexec -n N``), the cores of a host are shared by the ranks on it: each rank gets
  ``cores // ranks on this host`` threads (at least 1) for OpenBLAS, OpenMP and Numba, as ``torchrun`` does,
  unless the user set any of those thread counts. Without it N ranks would each start a thread per core. On the
  2-core VM, 2 ranks of one thread ran the default job's training steps 5-20% faster than one process of two
  threads (the parts of a step that do not split over threads run side by side; docs/performance.md).
"""
import os

#: thread-count variables of the libraries under the package (OpenBLAS, OpenMP, Numba, MKL)
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS")
#: the number of ranks an MPI launcher started on this host (MPICH/Hydra, Open MPI); set only in processes it started
LOCAL_SIZE_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")


def ranks_on_this_host(environ=os.environ) -> int:
    """How many processes an MPI launcher started on this host; 1 without a launcher."""
    for name in LOCAL_SIZE_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_rank(environ=os.environ) -> int | None:
    """The thread count each rank should use, or None to leave the libraries' defaults (no launcher, or the
    user chose a thread count)."""
    ranks = ranks_on_this_host(environ)
    if ranks == 1 or any(name in environ for name in THREAD_VARIABLES):
        return None
    return max(1, usable_cores() // ranks)


def apply(environ=os.environ) -> None:
    """Set the defaults above in ``environ`` (the process's environment)."""
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    threads = threads_per_rank(environ)
    if threads is not None:
        for name in THREAD_VARIABLES:
            environ[name] = str(threads)
