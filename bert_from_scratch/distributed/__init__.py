"""Data-parallel training over MPI: the same run on N processes, N machines or N GPUs.

``mpiexec -n N bert-from-scratch pretrain ...`` (or ``finetune``) runs N copies of the job; each computes a
disjoint 1/N of every global batch, and the gradients are averaged with ``Allreduce`` before the one
optimizer step that every rank makes, so N ranks give the parameters of one process (docs/distributed.md).

- :mod:`.world`: the communicator seam (a world of one without ``mpiexec``, ``mpi4py`` under it);
- :mod:`.gradients`: each rank's loss weights and the bucketed gradient average (exact over uneven shards);
- :mod:`.job`: what a job does per rank: shard, log on rank 0, agree at the start, fail together.

Install: ``pip install -e ".[distributed]"`` (mpi4py and MPICH from PyPI).
"""
from .world import INSTALL_HINT, DistributedError, World, get_world, set_world  # noqa: F401
