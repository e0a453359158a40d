"""The communicator seam: who am I (``rank``), how many are we (``size``), and the few collectives training needs.

A plain launch (``python``, ``bert-from-scratch``) gets a :class:`World` of size 1 and never imports MPI, so
nothing changes for it. Under ``mpiexec -n N`` (MPICH, Open MPI, Intel MPI: each sets a rank variable in the
environment of the processes it starts) :func:`get_world` returns an :class:`MpiWorld` over
``MPI.COMM_WORLD`` through ``mpi4py``. Training code only talks to this interface:

=====================  ==================================================================
``rank``, ``size``     this process's number (0 .. N-1), and N
``is_root``            rank 0: the one that prints, evaluates and writes checkpoints
``allreduce_(buf)``    in-place sum over ranks of a contiguous NumPy buffer (``MPI.Allreduce``)
``iallreduce_(buf)``   the same, started non-blocking; returns a request with ``.wait()``
``allgather(obj)``     a list of every rank's (small, picklable) object
``allgatherv_(parts)``  every rank's slice of a flat array, on every rank (``MPI.Allgatherv``; ZeRO-1)
``bcast(obj)``         rank 0's object on every rank
``bcast_arrays(d)``    rank 0's dict of NumPy arrays on every rank, as raw buffers (``MPI.Bcast``)
``barrier()``          wait for everyone (sleeping, not spinning)
``abort(code)``        end the whole job now, every rank (``MPI_Abort``)
=====================  ==================================================================
"""
from __future__ import annotations

import os
import sys
import time
import warnings

import numpy as np

#: environment variables an MPI launcher sets in every process it starts (MPICH/Hydra, Open MPI, PMIx, Slurm's PMI)
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID")
INSTALL_HINT = 'pip install -e ".[distributed]"  (brings mpi4py and MPICH)'
#: seconds between a failing rank's last words and MPI_Abort: without them the launcher can end the job
#: before it has passed that rank's error line on to the terminal
ABORT_GRACE_S = 1.0
#: how often a rank waiting at a barrier looks whether the others have arrived (seconds)
BARRIER_POLL_S = 0.002


class DistributedError(ValueError):
    """A data-parallel run cannot go on (mismatched ranks, a batch too small to split, MPI missing)."""


class _Done:
    """A finished request (what :meth:`World.iallreduce_` returns when there is nothing to wait for)."""

    def wait(self) -> None:
        return None


class World:
    """One process alone: every collective is the identity. The base class of :class:`MpiWorld`."""

    rank = 0
    size = 1

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_(self, buf: np.ndarray) -> np.ndarray:
        return buf

    def iallreduce_(self, buf: np.ndarray):
        return _Done()

    def allgather(self, obj) -> list:
        return [obj]

    def allgatherv_(self, parts: list, rank: int) -> list:
        """Every rank's ``parts[rank]`` (1-D arrays of one dtype, sizes known to all) on every rank."""
        return parts

    def bcast(self, obj):
        return obj

    def bcast_arrays(self, arrays: dict | None) -> dict:
        """Rank 0's ``{name: array}`` on every rank (the others pass None)."""
        return arrays

    def barrier(self) -> None:
        return None

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank {self.rank} of {self.size})"


class MpiWorld(World):
    """``MPI.COMM_WORLD`` (or any mpi4py communicator) behind the :class:`World` interface."""

    def __init__(self, comm=None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def allreduce_(self, buf: np.ndarray) -> np.ndarray:
        """Sum ``buf`` (contiguous, float32/float64) over the ranks, in place."""
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def iallreduce_(self, buf: np.ndarray):
        return self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def allgather(self, obj) -> list:
        return self.comm.allgather(obj)

    def allgatherv_(self, parts: list, rank: int) -> list:
        counts = [int(p.size) for p in parts]
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
        total = np.empty(sum(counts), dtype=parts[rank].dtype)
        self.comm.Allgatherv(parts[rank], [total, counts, displs, self.MPI._typedict[total.dtype.char]])
        return [total[d:d + c] for d, c in zip(displs, counts)]

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def bcast_arrays(self, arrays: dict | None) -> dict:
        # names, shapes and dtypes go pickled; the contents as raw buffers, without a pickled copy of each
        layout = self.bcast(None if arrays is None else {k: (a.shape, a.dtype.str) for k, a in arrays.items()})
        out = {}
        for name, (shape, dtype) in layout.items():
            buf = np.ascontiguousarray(arrays[name]) if self.is_root else np.empty(shape, dtype)
            self.comm.Bcast(buf, root=0)
            out[name] = buf
        return out

    def barrier(self) -> None:
        # MPI_Barrier spins on its core while it waits (MPICH polls), and the waits here can be long: ranks held
        # back while one host's first rank compiles the kernels in two worker processes, which then got one core
        # instead of two (49 s against ~20). A non-blocking barrier, tested every 2 ms, leaves the core free.
        request = self.comm.Ibarrier()
        while not request.Test():
            time.sleep(BARRIER_POLL_S)

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process (its rank variable is set)."""
    return any(v in os.environ for v in RANK_VARIABLES)


_world: World | None = None
every_rank_stopping = False          # set when every rank raised the same error (job.SameEverywhere)


def get_world() -> World:
    """The process's world: :class:`MpiWorld` under ``mpiexec`` with mpi4py installed, else a world of one.

    Under a launcher without mpi4py the run would silently train N separate copies, so that is an error."""
    global _world
    if _world is None:
        if not launched_by_mpi():
            _world = World()
        else:
            try:
                import mpi4py  # noqa: F401
            except ImportError:
                raise DistributedError(f"started by an MPI launcher but mpi4py is not installed: "
                                       f"{INSTALL_HINT}") from None
            _world = MpiWorld()
    return _world


def local_rank() -> int:
    """This process's rank among those on its host (MPICH/Hydra, Open MPI, Slurm), else 0."""
    for name in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


def quiet_other_ranks() -> None:
    """Under ``mpiexec``: only rank 0 writes to stdout (reports, progress) and warnings (every rank reads the same
    data, so each would print the same ones); errors (stderr) stay on every rank."""
    if launched_by_mpi() and not get_world().is_root:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        warnings.simplefilter("ignore")


def end_every_rank_on_failure(status: int) -> None:
    """Under ``mpiexec``, a command that failed on this rank (``status`` != 0) ends the job on every rank:
    the others may be waiting for this one in a collective, and would wait forever."""
    if status and launched_by_mpi() and get_world().size > 1 and not every_rank_stopping:
        get_world().abort(status)


def set_world(world: World | None) -> None:
    """Use ``world`` from now on (tests, notebooks); None: detect again at the next :func:`get_world`."""
    global _world
    _world = world
