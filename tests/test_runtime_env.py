"""The thread settings the package makes on import (bert_from_scratch/runtime_env.py): defaults a user's
environment overrides, and one share of the cores per rank under an MPI launcher."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bert_from_scratch import runtime_env
from bert_from_scratch.distributed.world import RANK_VARIABLES
from mpi_launch import MPIEXEC, needs_mpi, rank_reports

SHOW = ("import json, os, bert_from_scratch, numba; "
        "print(json.dumps({**{k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'OPENBLAS_THREAD_TIMEOUT', "
        "'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'NUMBA_NUM_THREADS')}, 'numba': numba.config.NUMBA_NUM_THREADS}))")
MINE = (runtime_env.THREAD_VARIABLES + ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", runtime_env.SET_BY_PACKAGE_VARIABLE,
                                         runtime_env.LIBRARY_DEFAULTS_VARIABLE) + runtime_env.LOCAL_SIZE_VARIABLES)


def plain_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in MINE and k not in RANK_VARIABLES and not k.startswith(("PMI_", "OMPI_"))}
    return {**env, **extra}


def show(env, launcher=()) -> list[dict]:
    out = subprocess.run([*launcher, sys.executable, "-c", SHOW], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return rank_reports(out)


def test_importing_the_package_sets_the_wait_settings_unless_the_user_did():
    """OMP_WAIT_POLICY and OPENBLAS_THREAD_TIMEOUT (docs/performance.md, "Thread pools"): set by the import before
    NumPy loads OpenBLAS, and a value already in the environment is kept. A plain launch keeps the libraries'
    own thread counts."""
    (got,) = show(plain_env())
    assert (got["OMP_WAIT_POLICY"], got["OPENBLAS_THREAD_TIMEOUT"]) == ("PASSIVE", "4")
    assert got["OMP_NUM_THREADS"] is None and got["NUMBA_NUM_THREADS"] is None
    (got,) = show(plain_env(OMP_WAIT_POLICY="ACTIVE", OPENBLAS_THREAD_TIMEOUT="28"))
    assert (got["OMP_WAIT_POLICY"], got["OPENBLAS_THREAD_TIMEOUT"]) == ("ACTIVE", "28")


ORDER = ("import sys, warnings\n{first}\nfrom bert_from_scratch import runtime_env\n"
         "from bert_from_scratch.nn.blas_pair import numpy_openblas\n"
         "blas = numpy_openblas(); blas is not None and blas.set_num_threads(2)\n"
         "with warnings.catch_warnings(record=True) as seen:\n"
         "    warnings.simplefilter('always')\n"
         "    runtime_env.warn_if_numpy_came_first()\n"
         "print(repr((runtime_env.openblas_loaded_first, blas is not None, "
         "[w.category.__name__ for w in seen if 'imported before bert_from_scratch' in str(w.message)])))")


@pytest.mark.parametrize("first, env, flagged", [
    ("import numpy", {}, True),                                   # NumPy's OpenBLAS loaded before the setting
    ("import bert_from_scratch", {}, False),                      # the package first: in time
    ("import numpy", {"OPENBLAS_THREAD_TIMEOUT": "4"}, False),    # the user set it before Python started
])
def test_numpy_imported_first_is_noticed_and_warned_about(first, env, flagged):
    """``import numpy`` before the package: OpenBLAS loaded before the wait was set (docs/performance.md, "Import
    order"); the training loop's warning fires then and only then (where NumPy's BLAS is OpenBLAS)."""
    out = subprocess.run([sys.executable, "-c", ORDER.format(first=first)], env=plain_env(**env),
                         capture_output=True, text=True, check=True, timeout=120).stdout.strip().splitlines()[-1]
    noticed, has_openblas, warned = ast.literal_eval(out)
    assert noticed is flagged
    assert warned == (["NumpyFirstWarning"] if flagged and has_openblas else [])


def test_the_training_loop_checks_the_import_order_as_it_starts(monkeypatch):
    """``run_loop`` calls the check at every start (Python shows the warning itself once per process)."""
    from bert_from_scratch.training import loop
    calls = []
    monkeypatch.setattr(loop, "warn_if_numpy_came_first", lambda params: calls.append(params))
    for _ in range(2):
        loop.run_loop(None, None, iter(()), schedule=lambda s: 0.0, total_steps=1, progress=False,
                      log=lambda m: None)
    assert calls == [None, None]


def test_the_warning_is_for_models_on_numpy_only(monkeypatch):
    """On a GPU (CuPy parameters) OpenBLAS does not run the step: no warning, even with NumPy first."""
    import warnings

    class FakeGpuArray:                 # stands for a cupy.ndarray (CuPy need not be installed)
        pass

    class TwoThreadOpenBlas:            # NumPy's OpenBLAS at 2 threads, whatever BLAS this machine has
        def get_num_threads(self):
            return 2
    monkeypatch.setattr(runtime_env, "openblas_loaded_first", True)
    from bert_from_scratch.nn import blas_pair
    monkeypatch.setattr(blas_pair, "numpy_openblas", TwoThreadOpenBlas)
    from bert_from_scratch.nn import xp
    monkeypatch.setattr(xp, "is_cupy_array", lambda a: isinstance(a, FakeGpuArray))
    for params, want in (({"w": FakeGpuArray()}, 0), ({"w": np.zeros(2)}, 1), (None, 1)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            runtime_env.warn_if_numpy_came_first(params)
        assert sum(issubclass(w.category, runtime_env.NumpyFirstWarning) for w in seen) == want
    monkeypatch.setattr(runtime_env, "openblas_loaded_first", False)        # the package first: never
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        runtime_env.warn_if_numpy_came_first({"w": np.zeros(2)})
    assert not seen


def test_a_benchmarks_torch_process_starts_with_the_libraries_own_settings():
    """This package's waits suit it, not torch (runtime_env.py): a benchmark starts torch's processes inside
    ``libraries_own_defaults``, where what the import set is out, the child's import sets nothing, and what the user
    set stays. A process started outside it gets the package's waits (the settings torch's benchmark sides ran under
    until 2026-12-06, 13-28% slower for its eager step)."""
    env = plain_env()
    runtime_env.apply(env)
    assert env[runtime_env.SET_BY_PACKAGE_VARIABLE] == "OMP_WAIT_POLICY,OPENBLAS_THREAD_TIMEOUT"
    before = dict(env)
    with runtime_env.libraries_own_defaults(env):
        (got,) = show(dict(env))
        assert env[runtime_env.LIBRARY_DEFAULTS_VARIABLE] == "1"
        runtime_env.apply(env)                                   # what the child's import does: nothing
        assert "OMP_WAIT_POLICY" not in env and "OPENBLAS_THREAD_TIMEOUT" not in env
    assert env == before                                         # put back
    assert got["OMP_WAIT_POLICY"] is None and got["OPENBLAS_THREAD_TIMEOUT"] is None
    (outside,) = show(dict(env))
    assert outside["OMP_WAIT_POLICY"] == "PASSIVE"
    env = plain_env(OMP_WAIT_POLICY="ACTIVE")                    # the user's own choice holds for every side
    runtime_env.apply(env)
    assert env[runtime_env.SET_BY_PACKAGE_VARIABLE] == "OPENBLAS_THREAD_TIMEOUT"
    with runtime_env.libraries_own_defaults(env):
        (got,) = show(dict(env))
    assert got["OMP_WAIT_POLICY"] == "ACTIVE" and got["OPENBLAS_THREAD_TIMEOUT"] is None


@pytest.mark.parametrize("ranks, cores, want", [(2, 2, 1), (2, 8, 4), (3, 8, 2), (4, 2, 1), (1, 8, None)])
def test_each_rank_gets_its_share_of_the_cores(monkeypatch, ranks, cores, want):
    monkeypatch.setattr(runtime_env, "usable_cores", lambda: cores)
    env = {"MPI_LOCALNRANKS": str(ranks)}
    assert runtime_env.threads_per_rank(env) == want
    runtime_env.apply(env)
    for name in runtime_env.THREAD_VARIABLES:
        assert env.get(name) == (None if want is None else str(want))
    # Open MPI's variable counts the same way; a thread count the user chose is left alone, all of them
    assert runtime_env.threads_per_rank({"OMPI_COMM_WORLD_LOCAL_SIZE": str(ranks)}) == want
    env = {"MPI_LOCALNRANKS": str(ranks), "NUMBA_NUM_THREADS": "3"}
    runtime_env.apply(env)
    assert env["NUMBA_NUM_THREADS"] == "3" and "OMP_NUM_THREADS" not in env


@needs_mpi
def test_under_mpiexec_every_library_of_every_rank_takes_its_share():
    """Real ranks: OpenBLAS's, OpenMP's and Numba's counts (Numba's as Numba itself read it) are
    cores // ranks, so two ranks on a 2-core machine do not start four threads."""
    want = max(1, runtime_env.usable_cores() // 2)
    ranks = show(plain_env(), launcher=(MPIEXEC, "-n", "2"))
    assert len(ranks) == 2
    for got in ranks:
        assert got["numba"] == want
        assert got["OMP_NUM_THREADS"] == got["OPENBLAS_NUM_THREADS"] == got["NUMBA_NUM_THREADS"] == str(want)
    for got in show(plain_env(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1"), launcher=(MPIEXEC, "-n", "2")):
        assert got["OPENBLAS_NUM_THREADS"] is None and got["numba"] == 1          # the user's choice, untouched


def test_the_estimate_counts_every_process(monkeypatch):
    """Under mpiexec each rank measures its own (one-core) matmul rate; the run is estimated at N times it."""
    from types import SimpleNamespace

    from bert_from_scratch.bench import train_step
    from bert_from_scratch.cli.pretrain import estimate

    monkeypatch.setattr(train_step, "matmul_gflops", lambda repeats=5, device="cpu": 100.0)
    args = SimpleNamespace(vocab=None, vocab_size=8000, size="tiny", seq_len=64, layers=2, hidden=128, heads=2,
                           intermediate=512, batch_size=128, steps=1100)
    one, two = estimate(args), estimate(args, processes=2)
    assert "at 100 GFLOP/s (float32);" in one
    assert "at 100 GFLOP/s (float32) per process x 2 processes;" in two

    def minutes(line):
        return [float(x) for x in line.split("about ")[1].split(" min")[0].split("-")]

    assert minutes(one)[1] == pytest.approx(2 * minutes(two)[1], abs=1)


def test_rank_reports_reads_objects_that_share_a_line():
    """The ranks' JSON lines as mpiexec once forwarded them in CI (one object before the other's newline), and a
    stray brace in other output: read object by object. The line-by-line reading it replaced fails here."""
    a, b = {"rank": 0, "numba": 1}, {"rank": 1, "numba": 1}
    out = f'warming up {{\n{json.dumps(a)}{json.dumps(b)}\n\n'
    assert rank_reports(out) == [a, b]
    with pytest.raises(json.JSONDecodeError):
        [json.loads(line) for line in out.splitlines() if line.startswith("{")]
