"""Reducing CuPy gradients through NCCL: the GPU path of :class:`~.gradients.GradientSync`.

MPI starts the ranks and carries the small host-side messages (loss terms, the start-up checks); the gradient
buckets, on the GPU, go through NVIDIA's NCCL (``cupy.cuda.nccl``), which moves them GPU to GPU (NVLink,
PCIe or InfiniBand) without a copy to the host. The NCCL communicator needs one unique id made by rank 0
and known to all: it is broadcast with MPI. Each rank uses the GPU ``local rank mod number of GPUs``.

NCCL calls are queued on the current CUDA stream, so nothing waits for them until the stream is
synchronised: :meth:`NcclReducer.synchronize` is called before any host-side MPI call that reads results.
"""
from __future__ import annotations

import os

from .world import World, local_rank

#: NCCL's names for the dtypes a bucket can have
_NCCL_DTYPES = {"float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64"}


def use_local_gpu() -> int:
    """Make ``local rank mod GPUs`` this process's current device (before any CuPy array is made)."""
    import cupy  # type: ignore

    device = local_rank() % cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(device).use()
    return device


class NcclReducer:
    """An NCCL communicator over the ranks of ``world``; in-place sums of CuPy buffers."""

    def __init__(self, world: World):
        import cupy  # type: ignore
        from cupy.cuda import nccl  # type: ignore

        self.cupy, self.nccl = cupy, nccl
        uid = nccl.get_unique_id() if world.is_root else None
        uid = world.bcast(uid)                                       # the id travels over MPI
        self.comm = nccl.NcclCommunicator(world.size, uid, world.rank)

    def allreduce_(self, buf):
        """Queue the sum of ``buf`` (a contiguous CuPy float32/float64 array) over the ranks, in place."""
        stream = self.cupy.cuda.get_current_stream()
        dtype = getattr(self.nccl, _NCCL_DTYPES[buf.dtype.name])
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, dtype, self.nccl.NCCL_SUM, stream.ptr)
        return buf

    def synchronize(self) -> None:
        """Wait for the queued GPU work (NCCL included): call before a host-side MPI call reads results."""
        self.cupy.cuda.get_current_stream().synchronize()
