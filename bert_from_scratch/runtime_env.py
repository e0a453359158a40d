"""Thread settings the package makes when it is imported, before NumPy and Numba start their thread pools.

Each is a default: a value the user has set in the environment wins. It only takes effect when this package is
imported before NumPy (OpenBLAS reads its variables when NumPy loads it; Numba when it is imported), as the
command line does. This module imports nothing but ``os`` and ``sys`` (built in) for that reason. Measurements:
docs/performance.md. Imported after NumPy (``import numpy`` or ``import matplotlib`` first, as most scripts and
notebooks begin), the OpenBLAS wait below comes too late: the one training loop then warns, once
(:func:`warn_if_numpy_came_first`: steps ~1.6x slower on 2 cores).

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

These settings suit this package, not every library: torch's eager steps, whose many small ops wake torch's OpenMP
threads op after op, took 13-28% longer under ``OMP_WAIT_POLICY=PASSIVE`` than with torch's own settings (the
default pretraining step, 2-vCPU AMD EPYC VM, 2026-12-06; docs/performance.md, "Torch under its own thread
settings"). So a benchmark starts each torch side in a process of its own with
:func:`libraries_own_defaults`: the variables this import set are taken out, and the child's import of the package
sets none (``BERT_FROM_SCRATCH_LIBRARY_DEFAULTS=1``); what the user set stays for every side.
"""
import contextlib
import os
import sys

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


#: the waits this package chooses (a value already in the environment wins)
WAIT_DEFAULTS = (("OMP_WAIT_POLICY", "PASSIVE"), ("OPENBLAS_THREAD_TIMEOUT", "4"))
#: "1" in a process's environment: importing the package there sets nothing (:func:`libraries_own_defaults`)
LIBRARY_DEFAULTS_VARIABLE = "BERT_FROM_SCRATCH_LIBRARY_DEFAULTS"
#: the variables :func:`apply` set in this process (not the user), comma-separated: inherited by its children
SET_BY_PACKAGE_VARIABLE = "BERT_FROM_SCRATCH_SET_VARIABLES"


#: True when this package set ``OPENBLAS_THREAD_TIMEOUT`` after NumPy had loaded OpenBLAS (``import numpy`` before
#: ``import bert_from_scratch``, or ``import matplotlib``, which imports NumPy): too late, OpenBLAS reads it when it
#: loads, and its threads keep their long busy-waits (:func:`warn_if_numpy_came_first`)
openblas_loaded_first = False


class NumpyFirstWarning(RuntimeWarning):
    """NumPy was imported before this package: training runs slower (:func:`warn_if_numpy_came_first`)."""


def apply(environ=os.environ, modules=sys.modules) -> None:
    """Set the defaults above in ``environ`` (the process's environment), and record which ones it set."""
    global openblas_loaded_first
    if environ.get(LIBRARY_DEFAULTS_VARIABLE) == "1":
        return
    set_here = [name for name in environ.get(SET_BY_PACKAGE_VARIABLE, "").split(",") if name]
    for name, value in WAIT_DEFAULTS:
        if name not in environ:
            environ[name] = value
            set_here.append(name)
            if name == "OPENBLAS_THREAD_TIMEOUT" and "numpy" in modules:
                openblas_loaded_first = True
    threads = threads_per_rank(environ)
    if threads is not None:
        for name in THREAD_VARIABLES:
            environ[name] = str(threads)
        set_here += THREAD_VARIABLES
    if set_here:
        environ[SET_BY_PACKAGE_VARIABLE] = ",".join(sorted(set(set_here)))


@contextlib.contextmanager
def libraries_own_defaults(environ=os.environ):
    """While it lasts, ``environ`` is as the user left it, for starting a process that must run another library as
    its users do (a benchmark's torch side): the variables :func:`apply` set are out, and the child's own import of
    the package sets none. Everything is put back on exit."""
    names = [n for n in environ.get(SET_BY_PACKAGE_VARIABLE, "").split(",") if n]
    names += [SET_BY_PACKAGE_VARIABLE, LIBRARY_DEFAULTS_VARIABLE]
    saved = {name: environ[name] for name in names if name in environ}
    for name in names:
        environ.pop(name, None)
    environ[LIBRARY_DEFAULTS_VARIABLE] = "1"
    try:
        yield
    finally:
        for name in names:
            environ.pop(name, None)
        environ.update(saved)


def warn_if_numpy_came_first(params: dict | None = None) -> None:
    """A :class:`NumpyFirstWarning` (shown once per process) when NumPy's OpenBLAS loaded before this package set
    its thread wait and runs on 2 or more threads, and the model's ``params`` (if given) are NumPy arrays (on a GPU
    OpenBLAS does not run the step). The one training loop calls it as it starts.

    Measured on the 2-vCPU VM (2026-12-07): the default pretraining step took 241-258 ms with ``import numpy`` first
    against 152-155 ms with ``import bert_from_scratch`` first (docs/performance.md, "Import order")."""
    if not openblas_loaded_first:
        return
    from .nn.blas_pair import numpy_openblas
    from .nn.xp import is_cupy_array
    if params and is_cupy_array(next(iter(params.values()))):
        return
    blas = numpy_openblas()
    if blas is None or blas.get_num_threads() < 2:
        return
    import warnings
    warnings.warn("NumPy was imported before bert_from_scratch, so OpenBLAS's threads keep busy-waiting after "
                  "each product (it reads OPENBLAS_THREAD_TIMEOUT when NumPy loads), on the cores the next kernels "
                  "need: training steps ran ~1.6x slower on 2 cores. Import bert_from_scratch before numpy and "
                  "matplotlib, or set OPENBLAS_THREAD_TIMEOUT=4 before starting Python.", NumpyFirstWarning,
                  stacklevel=3)
