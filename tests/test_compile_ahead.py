"""The Numba kernels compiled in background processes (training/compile_ahead.py) are the ones a real step reads.

Each test compiles into its own empty ``NUMBA_CACHE_DIR``, then a fresh process runs one step of the main
job's model (2 x 128, vocabulary 8,000, batch 8 x 64, dropout, MLM + NSP, AdamW) through the Numba backend
and reports, per kernel, how many signatures it loaded from the cache (hits) and how many it had to
compile (misses)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

from bert_from_scratch.training import compile_ahead

PROBE = r"""
import json
import numba
from bert_from_scratch.kernels import (numba_attention, numba_elementwise, numba_fused, numba_heads, numba_loss,
                                       numba_math, numba_optim)
from bert_from_scratch.bench.default_step import job_config, make_job_batch
from bert_from_scratch.model import BertForPreTraining
from bert_from_scratch.training.loop import train_step
from bert_from_scratch.training.optim import AdamW

cfg = job_config()
model = BertForPreTraining(cfg, seed=0, backend="numba")
train_step(model, make_job_batch(cfg, 8, 64), AdamW(model.params, lr=1e-3, weight_decay=0.01, backend=model.backend),
           1e-3, 1.0)
report = {}
for module in (numba_attention, numba_elementwise, numba_fused, numba_heads, numba_loss, numba_math, numba_optim):
    for name, f in vars(module).items():
        if isinstance(f, numba.core.registry.CPUDispatcher) and f.signatures:
            report[name] = [sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())]
print(json.dumps(report))
"""

#: kernels the default step must use (a probe that used none of them would prove nothing)
EXPECTED = {"forward_kernel", "backward_kernel", "residual_layernorm_forward_kernel",
            "residual_layernorm_backward_kernel", "bias_gelu_forward_kernel", "bias_gelu_backward_kernel",
            "cross_entropy_kernel", "scatter_add_rows_kernel", "_adamw_parallel", "_adamw_serial",
            "split_kernel", "stack_kernel", "embedding_sum_kernel"}


def probe(cache_dir) -> dict:
    """kernel name -> [cache hits, cache misses] of one real training step in a fresh process."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty Numba cache for this test; the workers inherit it through the environment."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    monkeypatch.setenv(compile_ahead.ENV_SWITCH, "1")
    return tmp_path / "numba"


def uncached(report) -> dict:
    """The kernels of a probe's report that the real step compiled itself, or never loaded: name -> [hits, misses]."""
    return {name: hm for name, hm in report.items() if hm[1] != 0 or hm[0] < 1}


def test_the_workers_compile_every_kernel_a_real_step_reads(empty_cache):
    """Every kernel of a real step comes from the workers' cache. Then the check is shown to reject a warm-up
    that missed some: with one module's cache files deleted (as if its worker had left them out), the probe
    reports exactly those kernels compiled again and the others still loaded."""
    lines = []
    assert compile_ahead.start().wait(lines.append)
    assert len(lines) == 1 and lines[0].startswith("kernels: Numba compiled in 2 background processes"), lines
    own = re.search(r"their own time: attention (\d+) s, layers (\d+) s;", lines[0])   # each worker's own seconds
    assert own and all(0 <= int(x) < 600 for x in own.groups()), lines
    report = probe(empty_cache)
    assert EXPECTED <= set(report), sorted(report)
    assert not uncached(report), f"compiled again by the real step (name: [hits, misses]): {uncached(report)}"

    from bert_from_scratch.kernels import numba_optim
    left_out = [f for f in empty_cache.rglob("numba_optim.*") if f.suffix in (".nbi", ".nbc")]
    assert left_out, sorted(p.name for p in empty_cache.rglob("*"))
    for f in left_out:
        f.unlink()
    optim = {name for name, f in vars(numba_optim).items() if name in report}
    assert {"_adamw_parallel", "_adamw_serial"} <= optim
    report = probe(empty_cache)
    assert set(uncached(report)) == optim, uncached(report)
    assert all(report[name] == [0, 1] for name in optim), {name: report[name] for name in optim}


def test_the_groups_split_the_backend_without_overlap():
    from dataclasses import fields

    from bert_from_scratch.nn.backend import Backend

    ops = [f.name for f in fields(Backend) if f.name != "name"]
    grouped = [op for group in compile_ahead.GROUPS.values() for op in group]
    assert sorted(grouped) == sorted(ops)
    hybrid = compile_ahead.hybrid_backend("attention")
    numba_ops, reference = compile_ahead.get_backend("numba"), compile_ahead.get_backend("numpy")
    assert hybrid.attention_backward is numba_ops.attention_backward
    assert hybrid.layernorm_forward is reference.layernorm_forward


def test_a_failing_worker_is_reported_in_one_line_and_the_job_goes_on():
    ahead = compile_ahead.start(groups=("no-such-group",))
    lines = []
    assert ahead.wait(lines.append) is False
    assert len(lines) == 1 and lines[0].startswith("note: compiling the kernels in the background failed "
                                                   "(no-such-group: usage:"), lines
    assert "the first step compiles them instead" in lines[0]


def test_stop_ends_the_workers_of_a_job_that_failed_early(monkeypatch):
    monkeypatch.setenv(compile_ahead.ENV_SWITCH, "1")
    with compile_ahead.start() as ahead:
        procs = [proc for proc, *_ in ahead.processes.values()]
    assert all(proc.poll() is not None for proc in procs)
    assert ahead.processes == {}


def test_it_starts_only_for_numba_on_the_cpu_and_when_not_switched_off(monkeypatch):
    monkeypatch.setenv(compile_ahead.ENV_SWITCH, "1")
    assert compile_ahead.enabled("auto") and compile_ahead.enabled("numba")
    assert not compile_ahead.enabled("numpy")
    assert not compile_ahead.enabled("auto", device="gpu")
    monkeypatch.setenv(compile_ahead.ENV_SWITCH, "0")
    assert not compile_ahead.enabled("auto")
    assert compile_ahead.start_if_enabled() is None


def test_the_pretraining_job_waits_for_the_workers_before_its_first_step(tmp_path, monkeypatch):
    from bert_from_scratch.training.pretrain_job import run_pretraining

    monkeypatch.setenv(compile_ahead.ENV_SWITCH, "1")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(f"word{(d * 7 + i) % 40} is here." for i in range(12))
                                  for d in range(8)))
    lines = []
    result, report = run_pretraining(corpus=str(corpus), out=tmp_path / "run", steps=2, batch_size=4,
                                     vocab_size=120, log=lines.append, progress=False, compile_ahead=True)
    assert not result.diverged and report["steps"] == 2
    kernel_lines = [line for line in lines if line.startswith("kernels: Numba compiled in 2 background processes")]
    assert len(kernel_lines) == 1, lines
    assert lines.index(kernel_lines[0]) < next(i for i, line in enumerate(lines) if line.startswith("step "))


def test_under_mpiexec_only_the_first_rank_of_a_host_compiles_and_its_workers_are_not_ranks(monkeypatch):
    """The ranks of a host share the kernel cache: the first starts the workers, the others wait at a barrier
    (wait_on_this_host). A worker must not look like a rank (it would try to join the MPI job)."""
    monkeypatch.setenv(compile_ahead.ENV_SWITCH, "1")
    monkeypatch.setattr(compile_ahead, "start", lambda: "started")
    monkeypatch.setattr(compile_ahead, "numba_available", lambda: True)
    monkeypatch.setenv("MPI_LOCALRANKID", "1")
    assert compile_ahead.start_if_enabled() is None
    monkeypatch.setenv("MPI_LOCALRANKID", "0")
    assert compile_ahead.start_if_enabled() == "started"
    for name, value in (("PMI_RANK", "0"), ("PMI_FD", "9"), ("MPI_LOCALNRANKS", "2"), ("OMPI_COMM_WORLD_RANK", "0"),
                        ("PMIX_RANK", "0"), ("NUMBA_NUM_THREADS", "1")):
        monkeypatch.setenv(name, value)
    env = compile_ahead.worker_environment()
    assert not [k for k in env if k.startswith(("PMI", "OMPI_", "MPI_LOCAL"))]
    assert env["NUMBA_NUM_THREADS"] == "1" and env["PATH"] == os.environ["PATH"]


def test_the_log_line_takes_a_workers_seconds_only_when_it_printed_a_number():
    """The parent reads the last word a worker printed; anything but a whole number shows as "?" (never garbage)."""
    processes = {}
    for group, text in (("counted", "compiling...\n12"), ("chatty", "12 s, then a word")):
        err, out = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        proc = subprocess.Popen([sys.executable, "-c", f"print({text!r})"], stdout=out, stderr=err)
        processes[group] = (proc, err, out)
    lines = []
    assert compile_ahead.CompileAhead(processes).wait(lines.append)
    assert "(their own time: counted 12 s, chatty ? s;" in lines[0], lines
