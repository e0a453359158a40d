r"""Averaging gradients over ranks, exactly: the loss each rank back-propagates, and the bucketed Allreduce.

**Why a weight per rank.** The losses are means: MLM over the labelled positions of the batch, NSP and
classification over its sequences. Rank :math:`r` holds :math:`n_r` of the :math:`n = \sum_r n_r` counted
items of a loss term and computes the mean :math:`\bar\ell_r` over its own. The mean of the per-rank means is
*not* the global mean when the :math:`n_r` differ (they do: masked positions fall where they fall). So
each rank back-propagates its term with the weight :math:`w_r = N n_r / n` (N ranks), and

.. math::
    \frac1N \sum_r w_r \nabla\bar\ell_r = \sum_r \frac{n_r}{n}\,\frac{1}{n_r}\sum_{i\in r}\nabla\ell_i
    = \frac1n \sum_i \nabla\ell_i ,

the gradient of one process on the whole batch; the average over ranks is the ``Allreduce`` sum divided
by N. The counts :math:`n_r` and the weighted losses are summed over the ranks first, in one small
``Allreduce`` of a few float64 numbers, which also gives every rank the same global loss (so a NaN anywhere
stops every rank at the same step, and the logs show the loss of the whole batch).

**Buckets.** The gradients are copied into a few contiguous float buffers (``bucket_mb`` each, in the
reverse order of the parameters, as torch's DDP does: the order the backward finishes them), one
``Allreduce`` per bucket, and the averaged values are handed back as views of the buckets.

**Overlap** (``overlap=True``, the default): :meth:`GradientSync.attach` gives the model a hook that the
backward calls after each encoder layer (``model/blocks.py`` encoder_backward); every bucket whose
gradients are all final by then starts a non-blocking ``Iallreduce`` while the backward of the layers
below goes on. The embeddings' gradients are final only at the very end (the word embeddings are tied to the
MLM decoder), so their bucket is reduced last. ``overlap=False``: every bucket after the backward.
"""
from __future__ import annotations

import os
import time

import numpy as np

from ..constants import IGNORE_INDEX
from ..nn.xp import get_array_module
from .world import World

#: tests only: plant a bug to show the equivalence tests catch it: "sum" (no division by N) or
#: "skip-rank-<r>" (rank r takes part in the Allreduce but keeps its own gradients instead of the sum),
#: "no-row-offset" (dropout masks keyed by the local row, not the global one: ``job.DataParallel.shard``)
PLANT_ENV = "BERT_FROM_SCRATCH_TEST_PLANT"


class _Queued:
    """An NCCL reduction: queued on the CUDA stream, waited for by the stream synchronisation."""

    def wait(self) -> None:
        return None


def loss_terms(out, inputs: dict) -> list[tuple[str, float, int]]:
    """(name, this rank's mean, this rank's count) of each mean in the model's loss.

    Pre-training: ``mlm`` over labelled positions and ``nsp`` over sequences; a classifier: ``loss`` over the
    labels that count (every example of a sequence classifier, the non -100 tokens of a token classifier)."""
    xp = get_array_module(inputs["input_ids"])
    if hasattr(out, "mlm_loss"):
        terms = []
        if out.mlm_loss is not None:
            terms.append(("mlm", out.mlm_loss, int((inputs["labels"] != IGNORE_INDEX).sum())))
        if out.nsp_loss is not None:
            terms.append(("nsp", out.nsp_loss, int(inputs["next_sentence_label"].shape[0])))
        return terms
    labels = xp.asarray(inputs["labels"])
    return [("loss", out.loss, int((labels != IGNORE_INDEX).sum()))]


class GradientSync:
    """What :func:`~bert_from_scratch.training.loop.train_step` calls on every rank of a data-parallel run.

    ``sync.loss(out, inputs)`` -> (global loss, keyword arguments of ``model.backward``, factor for the
    gradients); ``sync.gradients(grads)`` -> the gradients averaged over the ranks (same keys)."""

    def __init__(self, world: World, bucket_mb: float = 4.0, overlap: bool = True):
        self.world = world
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.overlap = overlap
        self._layout = None                       # [(dtype, [(name, shape, offset, size)], buffer)]
        self._requests: dict = {}                 # bucket index -> request of its non-blocking Allreduce
        self._scale = 1.0
        self._armed = False                       # between this step's loss() and gradients(): the hook may act
        self._nccl = None                         # an NcclReducer once the buckets are CuPy arrays
        self.seconds = 0.0                        # time spent in (or waiting for) the gradient reductions
        self.bytes_reduced = 0                    # per step: bytes each rank hands to Allreduce
        self.steps = 0
        self.started_in_backward = 0              # buckets of the last step whose reduction began during backward
        plant = os.environ.get(PLANT_ENV, "")
        self._plant_sum = plant == "sum"
        self._plant_skip = plant == f"skip-rank-{world.rank}"

    # ---- the loss --------------------------------------------------------------------------
    def loss(self, out, inputs: dict) -> tuple[float, dict, float]:
        terms = loss_terms(out, inputs)                              # (host floats: the GPU stream is synced)
        n = self.world.size
        local = np.zeros(2 * len(terms), dtype=np.float64)          # [count_t ..., count_t * mean_t ...]
        for j, (_, mean, count) in enumerate(terms):
            local[j] = count
            local[len(terms) + j] = count * float(mean) if count else 0.0
        total = self.world.allreduce_(local)
        self._armed = True
        counts, sums = total[:len(terms)], total[len(terms):]
        loss = float(sum(s / c for s, c in zip(sums, counts) if c))
        weights = {name: (n * count / counts[j] if counts[j] else 0.0) for j, (name, _, count) in enumerate(terms)}
        if len(terms) == 1:                                          # one mean: scale the gradients instead
            self._scale = weights[terms[0][0]]
            return loss, {}, self._scale
        self._scale = 1.0
        return loss, {f"{name}_scale": w for name, w in weights.items()}, 1.0

    # ---- the gradients ---------------------------------------------------------------------
    def attach(self, model) -> "GradientSync":
        """Lay the buckets out over ``model.params``; with overlap, hook the model's backward."""
        self._build_layout(model.params)
        if self.overlap:
            model.grad_ready_hook = self.grads_ready
        return self

    def _build_layout(self, grads: dict) -> None:
        layout, current, size, dtype = [], [], 0, None
        for name in reversed(list(grads)):                           # the order the backward finishes them
            g = grads[name]
            if current and (g.dtype != dtype or (size + g.size) * g.dtype.itemsize > self.bucket_bytes):
                layout.append((dtype, current, size))
                current, size = [], 0
            dtype = g.dtype
            current.append((name, g.shape, size, g.size))
            size += g.size
        layout.append((dtype, current, size))
        xp = get_array_module(next(iter(grads.values())))
        if xp is not np and self._nccl is None:                      # CuPy arrays: buckets on the GPU, via NCCL
            from .nccl import NcclReducer

            self._nccl = NcclReducer(self.world)
        self._layout = [(dt, entries, xp.empty(total, dtype=dt)) for dt, entries, total in layout]
        self.bytes_reduced = sum(buf.nbytes for _, _, buf in self._layout)

    @property
    def buckets(self) -> list:
        """The flat buffers (one per bucket)."""
        return [buf for _, _, buf in self._layout or []]

    def _start(self, j: int, grads: dict) -> None:
        """Pack bucket ``j`` (scaled) and start its non-blocking Allreduce."""
        _, entries, buf = self._layout[j]
        for name, _, offset, size in entries:
            buf[offset:offset + size] = grads[name].reshape(-1)
        if self._scale != 1.0:
            buf *= buf.dtype.type(self._scale)
        t0 = time.perf_counter()
        send = buf.copy() if self._plant_skip else buf                # (planted: this rank keeps its own)
        if self._nccl is not None:                                   # queued on the CUDA stream
            self._requests[j] = (_Queued(), self._nccl.allreduce_(send))
        else:
            self._requests[j] = (self.world.iallreduce_(send), send)
        self.seconds += time.perf_counter() - t0

    def grads_ready(self, grads: dict) -> None:
        """The backward's hook: start every bucket whose gradients are all there and final (only inside a
        training step of this sync: a backward outside one, e.g. for attribution, reduces nothing)."""
        if not self._armed:
            return
        for j, (_, entries, _) in enumerate(self._layout):
            if j not in self._requests and all(name in grads and "embeddings." not in name
                                               for name, _, _, _ in entries):
                self._start(j, grads)
                self.started_in_backward += 1
        for request, _ in self._requests.values():          # MPI moves a non-blocking reduction on only inside
            if hasattr(request, "Test"):                    # MPI calls: poke the ones in flight after each layer
                request.Test()

    def gradients(self, grads: dict, scale: float = 1.0) -> dict:
        """``scale`` x the gradients, averaged over the ranks: a new dict (views of the buckets), same order."""
        if self._layout is None:
            self._build_layout(grads)
        self._scale = scale
        early, self.started_in_backward = self.started_in_backward, 0
        for j in range(len(self._layout)):                           # what the backward did not start
            if j not in self._requests:
                self._start(j, grads)
        out = {}
        t0 = time.perf_counter()
        if self._nccl is not None:
            self._nccl.synchronize()                                 # before the next host-side MPI call
        for j, (_, entries, buf) in enumerate(self._layout):
            self._requests[j][0].wait()
            if not self._plant_sum:
                buf /= self.world.size
            for name, shape, offset, size in entries:               # unpack: views, no copy
                out[name] = buf[offset:offset + size].reshape(shape)
        self.seconds += time.perf_counter() - t0
        self._requests = {}
        self._armed = False
        self.steps += 1
        self.last_started_in_backward = early
        return {name: out[name] for name in grads}
