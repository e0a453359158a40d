"""Compile the Numba kernels on both cores while a job prepares its data.

A fresh install compiles each Numba kernel the first time a training step calls it and caches the machine
code on disk (``cache=True``, next to the kernels or in ``NUMBA_CACHE_DIR``). The default pretraining
step's fifteen kernels took ~33 s that way, on one core (the attention backward alone ~8 s), while the other
core idled: Numba compiles one function at a time per process (a global compiler lock).

:func:`start` launches one worker process per group of :data:`GROUPS` instead. Each runs a single tiny
training step (1 layer, hidden 8, batch 2 x 8) through a backend that is Numba for its group of operations and
the NumPy reference for the others. Compiled code depends on the argument types (dtype, layout,
dimensions), never on sizes, so the tiny step writes the very cache entries the job's first step reads:
``tests/test_compile_ahead.py`` runs a real step afterwards and finds no kernel that misses the cache. The job
calls :meth:`CompileAhead.wait` just before its first step; the data preparation has run meanwhile.

A worker that fails costs only its time: the first step compiles whatever is missing, as it always did.
``BERT_FROM_SCRATCH_COMPILE_AHEAD=0`` turns this off (the test suite does, outside the tests of this file).
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from ..nn.backend import Backend, get_backend, numba_available

ENV_SWITCH = "BERT_FROM_SCRATCH_COMPILE_AHEAD"

_ATTENTION = ("attention_forward", "attention_backward")
#: worker -> the backend operations it runs through Numba (about half of the compile time each)
GROUPS = {
    "attention": _ATTENTION,
    "layers": tuple(f.name for f in dataclasses.fields(Backend) if f.name != "name" and f.name not in _ATTENTION),
}

#: the AdamW kernel has a multi-threaded twin for tensors of at least 2^16 entries (kernels/numba_optim.py):
#: the tiny model's word embeddings (8,192 x 8) are that large, so both twins are compiled
TINY = dict(vocab_size=8192, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
            max_position_embeddings=16)


def hybrid_backend(group: str) -> Backend:
    """The NumPy reference with the operations of ``group`` taken from the Numba backend."""
    numba_ops, reference = get_backend("numba"), get_backend("numpy")
    return dataclasses.replace(reference, name=f"numba[{group}]",
                               **{op: getattr(numba_ops, op) for op in GROUPS[group]})


def tiny_training_step(backend, dtype=np.float32, batch: int = 2, seq_len: int = 8) -> float:
    """One pretraining step (MLM + NSP, dropout on, AdamW) of a tiny model through ``backend`` on a batch shaped
    like the job's (``bench/default_step.py: make_job_batch``); its loss."""
    from ..bench.default_step import make_job_batch
    from ..config import BertConfig
    from ..model import BertForPreTraining
    from .loop import train_step
    from .optim import AdamW

    cfg = BertConfig(**TINY)
    model = BertForPreTraining(cfg, seed=0, backend=backend, dtype=dtype)
    optimizer = AdamW(model.params, lr=1e-3, weight_decay=0.01, backend=model.backend)
    return train_step(model, make_job_batch(cfg, batch, seq_len, short_seq_prob=0.5), optimizer, lr=1e-3,
                      max_grad_norm=1.0).loss


class CompileAhead:
    """The running workers (:func:`start`); :meth:`wait` before the first step, :meth:`stop` on the way out."""

    def __init__(self, processes: dict):
        self.processes = processes               # group -> (Popen, stderr file, stdout file: the worker's seconds)

    def wait(self, log: Callable[[str], None] = print, timeout: float = 600.0) -> bool:
        """Wait for every worker; True when all of them succeeded. Says in one line what happened."""
        waited_from = time.perf_counter()
        failed, seconds = [], {}
        for group, (proc, err, out) in self.processes.items():
            try:
                rc = proc.wait(timeout=max(0.0, timeout - (time.perf_counter() - waited_from)))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = "timed out"
            if rc != 0:
                err.seek(0)
                lines = [line.strip() for line in err.read().decode("utf-8", "replace").splitlines() if line.strip()]
                failed.append(f"{group}: {lines[-1] if lines else f'exit status {rc}'}")
            else:
                out.seek(0)
                printed = out.read().decode("ascii", "replace").split()
                last = printed[-1] if printed else ""               # its last word: the seconds main() printed
                seconds[group] = last if last.isdigit() else "?"
            err.close()
            out.close()
        now = time.perf_counter()
        if failed:
            log(f"note: compiling the kernels in the background failed ({'; '.join(failed)}); "
                f"the first step compiles them instead")
        else:
            log(f"kernels: Numba compiled in {len(self.processes)} background processes (their own time: "
                + ", ".join(f"{group} {s} s" for group, s in seconds.items())
                + f"; what Numba's cache held was only read; {now - waited_from:.0f} s waited for; "
                  f"cached for later runs)")
        self.processes = {}
        return not failed

    def stop(self) -> None:
        """End workers still running (the job failed before its first step)."""
        for proc, err, out in self.processes.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            err.close()
            out.close()
        self.processes = {}

    def __enter__(self) -> "CompileAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def enabled(backend="auto", device: str = "cpu") -> bool:
    """Worth starting: the Numba backend on the CPU, not switched off by ``BERT_FROM_SCRATCH_COMPILE_AHEAD=0``."""
    name = backend.name if isinstance(backend, Backend) else backend
    return (os.environ.get(ENV_SWITCH, "1") != "0" and device == "cpu" and name in ("auto", "numba")
            and numba_available())


def start_if_enabled(backend="auto", device: str = "cpu") -> CompileAhead | None:
    """:func:`start` when :func:`enabled`, else None. Under ``mpiexec`` only the first rank of each host starts
    workers: the ranks of a host share the cache on disk (:func:`wait_on_this_host` holds the others back)."""
    from ..distributed.world import local_rank
    return start() if enabled(backend, device) and local_rank() == 0 else None


def wait_on_this_host(compiling: CompileAhead | None, log: Callable[[str], None] = print) -> None:
    """Wait for the workers of :func:`start_if_enabled`; under ``mpiexec`` every rank waits (a barrier) until the
    first rank of its host has them done, so that no rank compiles the same kernels again at its first step."""
    from ..distributed.world import get_world
    if compiling is not None:
        compiling.wait(log)
    world = get_world()
    if world.size > 1:
        world.barrier()


def worker_environment() -> dict:
    """This process's environment without an MPI launcher's variables: a worker is a plain process, never a rank."""
    from ..distributed.world import RANK_VARIABLES
    from ..runtime_env import LOCAL_SIZE_VARIABLES
    launcher = set(RANK_VARIABLES) | set(LOCAL_SIZE_VARIABLES)
    return {k: v for k, v in os.environ.items() if k not in launcher and not k.startswith(("PMI_", "PMIX_", "OMPI_"))}


def start(groups=tuple(GROUPS)) -> CompileAhead:
    """Start one worker process per group; they inherit the environment (``NUMBA_CACHE_DIR`` included)."""
    processes = {}
    for group in groups:
        err, out = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        proc = subprocess.Popen([sys.executable, "-m", __name__, group], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, env=worker_environment())
        processes[group] = (proc, err, out)
    return CompileAhead(processes)


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in GROUPS:
        print(f"usage: python -m {__name__} {{{','.join(GROUPS)}}}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    loss = tiny_training_step(hybrid_backend(args[0]))
    if not np.isfinite(loss):
        print(f"the tiny step's loss is {loss}", file=sys.stderr)
        return 1
    print(f"{time.perf_counter() - started:.0f}")          # the parent's log line: this worker's own seconds
    return 0


if __name__ == "__main__":
    sys.exit(main())
