"""What a training job does differently on N ranks, in one object: :class:`DataParallel`.

A job (``training/pretraining.py``, ``training/finetuning.py``) asks ``dp = DataParallel.current()`` and then:

- ``dp.shard(idx, model)``: its rows of each global batch. Every rank draws the *same* global batch (the same
  seeded order), so the shards are disjoint and deterministic: rank r takes rows ``[r B / N, (r + 1) B / N)``;
  the model's dropout masks are keyed by the global row of its first one;
- ``dp.sync_for(model)``: passed to the one training loop, which averages the gradients (None on one process);
- ``dp.optimizer(...)`` / ``dp.before_save(optimizer)``: AdamW, or its ZeRO-1 form (``zero.py``);
- ``dp.is_root`` / ``dp.log``: only rank 0 prints, evaluates and writes checkpoints;
- ``dp.start(batch_size, log, ...)``: at the start, every rank compares a digest of its arguments, data and
  initial weights with rank 0's; a difference (another corpus, seed or model size) is one clear error;
- ``with dp.together(), dp.run_folder(out, log)``: an exception on one rank ends the job on *every* rank
  (``MPI_Abort``) with a message naming the rank, instead of leaving the others waiting forever in a
  collective; and rank 0 alone locks the run folder (cleaning debris of a killed run) before the others
  read a checkpoint from it.

On one process every one of these is the identity, so a plain launch runs exactly as before.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys

import numpy as np

from ..nn.xp import to_numpy
from .gradients import PLANT_ENV, GradientSync
from . import world as world_module
from .world import DistributedError, World, get_world


#: switches of a run, read from the environment of every rank (``mpiexec -genv NAME VALUE`` sets them for all)
OVERLAP_ENV = "BERT_FROM_SCRATCH_DDP_OVERLAP"       # "0": reduce every bucket after the backward, not during it
BUCKET_ENV = "BERT_FROM_SCRATCH_DDP_BUCKET_MB"      # bucket size in MiB (default 4)
ZERO_ENV = "BERT_FROM_SCRATCH_DDP_ZERO"              # "1": ZeRO stage 1, AdamW's moments sharded (distributed/zero.py)


class SameEverywhere(DistributedError):
    """An error every rank raises at the same point (so no rank waits): only rank 0 prints it."""


def digest(value) -> str:
    """A short fingerprint of arrays, dicts of arrays, models (their config and weights) and plain values."""
    h = hashlib.sha1()
    if hasattr(value, "params") and hasattr(value, "config"):
        value = {"config": repr(sorted(value.config.to_dict().items())) if hasattr(value.config, "to_dict")
                 else repr(value.config), **value.params}
    if isinstance(value, dict):
        for k in sorted(value):
            h.update(f"{k}={digest(value[k])};".encode())
    elif hasattr(value, "dtype") and hasattr(value, "shape"):
        a = np.ascontiguousarray(to_numpy(value))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    else:
        h.update(repr(value).encode())
    return h.hexdigest()[:16]


class DataParallel:
    """A job's view of the world; see the module docstring."""

    def __init__(self, world: World | None = None, bucket_mb: float | None = None, overlap: bool | None = None):
        self.world = world or get_world()
        bucket_mb = float(os.environ.get(BUCKET_ENV, 4.0)) if bucket_mb is None else bucket_mb
        overlap = os.environ.get(OVERLAP_ENV, "1") != "0" if overlap is None else overlap
        self.sync = GradientSync(self.world, bucket_mb, overlap) if self.world.size > 1 else None

    @classmethod
    def current(cls) -> "DataParallel":
        return cls()

    def optimizer(self, params: dict, **adamw_options):
        """AdamW, or under ``BERT_FROM_SCRATCH_DDP_ZERO=1`` on N > 1 ranks its ZeRO-1 form (same updates)."""
        from ..training.optim import AdamW

        if self.world.size > 1 and os.environ.get(ZERO_ENV) == "1":
            from .zero import ShardedAdamW

            return ShardedAdamW(params, self.world, **adamw_options)
        return AdamW(params, **adamw_options)

    def before_save(self, optimizer) -> None:
        """Every rank, before rank 0 saves a checkpoint: ZeRO-1 gathers the moments on rank 0."""
        if hasattr(optimizer, "consolidate"):
            optimizer.consolidate()

    def sync_for(self, model):
        """What the training loop gets as ``sync``: None on one process; else the gradient averaging, its
        buckets laid out over ``model.params`` (and, with overlap, hooked into the model's backward)."""
        return None if self.sync is None else self.sync.attach(model)

    @property
    def is_root(self) -> bool:
        return self.world.is_root

    @property
    def size(self) -> int:
        return self.world.size

    def log(self, log):
        """``log`` on rank 0, nothing elsewhere."""
        return log if self.is_root else (lambda message: None)

    # ---- the data ------------------------------------------------------------------------------
    def bounds(self, batch_size: int) -> tuple[int, int]:
        """This rank's rows [lo, hi) of a global batch of ``batch_size`` rows."""
        n, r = self.world.size, self.world.rank
        if batch_size < n:
            raise SameEverywhere(f"the global batch ({batch_size} sequences) is smaller than the number of "
                                 f"ranks ({n}): every rank needs at least one sequence; raise --batch-size")
        return r * batch_size // n, (r + 1) * batch_size // n

    def shard(self, idx, model=None):
        """Rows of a global batch's indices (B,) that this rank computes: a contiguous 1/N of them.

        ``model``: its ``dropout_row_offset`` becomes the global row of the shard's first row, so that its
        dropout masks are those of the whole batch (``model/blocks.py`` encoder_forward)."""
        if self.world.size == 1:
            return idx
        lo, hi = self.bounds(len(idx))
        if model is not None and os.environ.get(PLANT_ENV) != "no-row-offset":
            model.dropout_row_offset = lo
        return idx[lo:hi]

    # ---- agreement at the start ------------------------------------------------------------------
    def check_same(self, log=None, **things) -> None:
        """Every rank must train the same thing: compare digests with rank 0's, one line naming what differs.

        Then ``log`` gets one line with each rank's process id and host, so that a launcher's message about
        a process that died ("BAD TERMINATION ... PID 1234") names its rank."""
        if self.world.size == 1:
            return
        mine = {name: digest(value) for name, value in things.items()}
        every = self.world.allgather((mine, os.getpid(), socket.gethostname()))
        if log is not None:
            log(f"data-parallel over {self.world.size} ranks (" + ", ".join(
                f"rank {r}: pid {pid} on {host}" for r, (_, pid, host) in enumerate(every)) + ")")
        every = [digests for digests, _, _ in every]
        diff = sorted({f"{name} (rank {r})" for r, theirs in enumerate(every) for name in mine
                       if theirs.get(name) != every[0].get(name)})
        if diff:
            raise SameEverywhere(f"the ranks were started with different arguments or data: "
                                 f"{', '.join(diff)} differ from rank 0's; launch every rank with the same "
                                 f"command line (corpus, seed, model size, batch size ...)")

    def start(self, batch_size: int, log=None, **things) -> None:
        """A job's first collective step: :meth:`check_same` on ``things``, and every rank has rows of a batch."""
        self.check_same(log, **things)
        if self.world.size > 1:
            self.bounds(batch_size)

    # ---- failures ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def together(self):
        """An exception on any rank ends every rank (one line on stderr naming the rank, then MPI_Abort)."""
        if self.world.size == 1:
            yield
            return
        try:
            yield
        except SameEverywhere:
            world_module.every_rank_stopping = True     # no MPI_Abort needed: every rank ends here
            if self.is_root:
                raise                                   # the command's one error line, exit status 2
            raise SystemExit(2) from None               # the same error on every rank: said once
        except SystemExit:
            raise                                       # (from an inner together(): already handled)
        except BaseException as e:                      # noqa: BLE001 (KeyboardInterrupt included)
            what = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"bert-from-scratch: error: rank {self.world.rank} of {self.world.size} failed "
                  f"({type(e).__name__}: {what}); ending the job on every rank", file=sys.stderr, flush=True)
            self.world.abort(2 if isinstance(e, ValueError) else 1)
            raise

    @contextlib.contextmanager
    def run_folder(self, folder, log):
        """Rank 0 holds the run folder (``training.run_folder.hold_run_folder``); the others wait until it does."""
        from ..training.run_folder import hold_run_folder

        if self.is_root:
            with hold_run_folder(folder, log):
                self.world.barrier()
                yield folder
        else:
            self.world.barrier()
            yield folder

