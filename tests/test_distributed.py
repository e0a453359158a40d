"""Data-parallel training over MPI (bert_from_scratch/distributed/), with real ``mpiexec -n 2`` / ``-n 3`` runs.

Each run is tests/distributed_driver.py: a tiny BERT (hidden 16, 2 layers) pretrained for 5 steps on synthetic
sequences whose labelled positions are spread unevenly over the rows, so ranks hold different numbers of
counted tokens (the case where averaging per-rank means would be wrong). Dropout is off unless said.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bert_from_scratch.distributed.world import RANK_VARIABLES

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))                 # distributed_driver (the runs' script) for its data
DRIVER = ROOT / "tests" / "distributed_driver.py"
from mpi_launch import MPIEXEC, needs_mpi, rank_reports  # noqa: E402  (tests/, on the path above)
INIT_STD = 0.02          # the relative error's floor: a parameter's scale is at least the init std


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES and not k.startswith(("PMI_", "OMPI_"))}
    env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    return env


def launch(n: int, out: Path, *args, env=None, timeout=90, plain=False):
    """Run the driver on ``n`` ranks (``plain``: without mpiexec); returns the CompletedProcess."""
    cmd = ([sys.executable] if plain else [MPIEXEC, "-n", str(n), sys.executable]) + [str(DRIVER), str(out), *args]
    return subprocess.run(cmd, env={**clean_env(), **(env or {})}, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def run_ok(n, out, *args, **kw) -> Path:
    p = launch(n, out, *args, **kw)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def params(out: Path, rank: int = 0) -> dict:
    with np.load(out / f"params-rank{rank}.npz") as f:
        return {k: f[k] for k in f.files}


def losses(out: Path, rank: int = 0) -> list:
    return json.loads((out / f"losses-rank{rank}.json").read_text())


def rel_error(a: dict, b: dict) -> float:
    """Largest over tensors of max|a - b| / max(max|a|, init std) (the key biases, whose gradient is zero
    analytically, stay near 0: a plain relative error there would compare rounding noise)."""
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) / max(float(np.abs(a[k]).max()), INIT_STD) for k in a)


def grad_norms(out: Path) -> np.ndarray:
    """The global gradient norm of every step (before clipping), from the checkpoint's history."""
    return np.array(json.loads((out / "checkpoint" / "trainer_state.json").read_text())["history"]["grad_norm"])


def equivalence_error(one: Path, many: Path, rank: int = 0) -> float:
    """Worst relative difference of the final parameters and of the per-step gradient norms. Both are needed:
    AdamW is nearly blind to a gradient's scale (and the clip to norm 1 rescales it too), so a gradient summed
    instead of averaged changes the parameters by little; its norm shows it at once."""
    a, b = grad_norms(one), grad_norms(many)
    return max(rel_error(params(one), params(many, rank)), float(np.abs(a - b).max() / np.abs(a).max()))


def bit_identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs shared by the tests (each a few seconds), made on first use: key -> output folder."""
    made = {}

    def get(key: str, n: int, *args, plain=False, env=None):
        if key not in made:
            made[key] = run_ok(n, tmp_path_factory.mktemp(key), *args, plain=plain, env=env)
        return made[key]
    return get


# ---------------------------------------------------------------------------------------------------------
# A plain launch is unchanged
# ---------------------------------------------------------------------------------------------------------
def test_a_plain_launch_is_a_world_of_one_without_mpi(monkeypatch):
    from bert_from_scratch.distributed import world as w

    for v in RANK_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    w.set_world(None)
    try:
        world = w.get_world()
        assert (world.rank, world.size, world.is_root) == (0, 1, True)
        assert type(world) is w.World
        buf = np.arange(3.0)
        assert world.allreduce_(buf) is buf and buf.tolist() == [0.0, 1.0, 2.0]
    finally:
        w.set_world(None)


def test_a_plain_command_never_imports_mpi():
    code = ("import sys; from bert_from_scratch.cli import main; "
            "status = main(['check', '13', '--solutions']); print(status, 'mpi4py.MPI' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert p.stdout.strip().splitlines()[-1] == "0 False", p.stdout + p.stderr


def test_shards_are_disjoint_contiguous_and_cover_the_batch():
    from bert_from_scratch.distributed.job import DataParallel, SameEverywhere
    from bert_from_scratch.distributed.world import World

    class Fake(World):
        def __init__(self, rank, size):
            self.rank, self.size = rank, size

    idx = np.arange(100, 107)                                     # a global batch of 7 over 3 ranks: 2, 2, 3
    shards = [DataParallel(Fake(r, 3)).shard(idx) for r in range(3)]
    assert [len(s) for s in shards] == [2, 2, 3]
    assert np.array_equal(np.concatenate(shards), idx)
    with pytest.raises(SameEverywhere, match="smaller than the number of ranks"):
        DataParallel(Fake(0, 3)).shard(idx[:2])


class LoopbackWorld:
    """An in-process world of 2 whose ranks hold equal shards: the Allreduce sum is twice the buffer."""
    rank, size, is_root = 0, 2, True

    def allreduce_(self, buf):
        buf *= 2
        return buf

    def iallreduce_(self, buf):
        buf *= 2

        class Done:
            def wait(self):
                return None
        return Done()


@pytest.mark.parametrize("overlap", [True, False])
def test_overlap_starts_buckets_during_the_backward_and_changes_no_bit(overlap):
    from bert_from_scratch.config import BertConfig
    from bert_from_scratch.distributed.gradients import GradientSync
    from bert_from_scratch.model import BertForPreTraining
    from bert_from_scratch.training.loop import train_step
    from bert_from_scratch.training.optim import AdamW
    from distributed_driver import synthetic_arrays

    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    a = synthetic_arrays(n=4)
    inputs = {"input_ids": a["input_ids"], "token_type_ids": a["token_type_ids"], "attention_mask": a["attention_mask"],
              "labels": a["labels"], "next_sentence_label": a["next_sentence_labels"]}
    results = []
    for sync_on in (False, True):
        model = BertForPreTraining(cfg, seed=0, dtype=np.float64, backend="numpy")
        sync = GradientSync(LoopbackWorld(), bucket_mb=0.002, overlap=overlap).attach(model) if sync_on else None
        train_step(model, inputs, AdamW(model.params, lr=1e-2), 1e-2, 1.0, sync)
        results.append(model.params)
    assert len(sync.buckets) > 5
    assert (sync.last_started_in_backward > 0) == overlap           # buckets of the top layers went first
    assert bit_identical(results[0], results[1])                      # 2 equal shards averaged = the batch


@pytest.mark.gpu
@needs_mpi
def test_cupy_gradients_go_through_nccl_and_change_no_bit():
    """A one-rank NCCL communicator (this machine's one GPU; NCCL refuses two ranks on one device): the CuPy
    buckets are packed, reduced by NCCL on the stream, synchronised and unpacked into the same update."""
    import cupy  # noqa: F401  (tests/conftest.py skips gpu tests without CuPy and a GPU)
    from bert_from_scratch.config import BertConfig
    from bert_from_scratch.distributed.gradients import GradientSync
    from bert_from_scratch.distributed.world import MpiWorld
    from bert_from_scratch.model import BertForPreTraining
    from bert_from_scratch.training.loop import train_step
    from bert_from_scratch.training.optim import AdamW
    from distributed_driver import synthetic_arrays

    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    a = synthetic_arrays(n=4)
    results = []
    for with_sync in (False, True):
        model = BertForPreTraining(cfg, seed=0, dtype=np.float64, backend="numpy").to("cupy")
        inputs = {k: model.xp.asarray(a[k]) for k in ("input_ids", "token_type_ids", "attention_mask", "labels")}
        inputs["next_sentence_label"] = model.xp.asarray(a["next_sentence_labels"])
        sync = GradientSync(MpiWorld(), bucket_mb=0.002).attach(model) if with_sync else None
        train_step(model, inputs, AdamW(model.params, lr=1e-2, backend=model.backend), 1e-2, 1.0, sync)
        results.append({k: model.xp.asnumpy(v) for k, v in model.params.items()})
    assert sync._nccl is not None and len(sync.buckets) > 5
    assert bit_identical(results[0], results[1])


# ---------------------------------------------------------------------------------------------------------
# Equivalence: N ranks with global batch G == one process with batch G
# ---------------------------------------------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("n, batch", [(2, 6), (3, 7)])            # 7 over 3 ranks: uneven shards, 2/2/3 rows
def test_n_ranks_equal_one_process_in_float64(runs, n, batch):
    one = runs(f"one-b{batch}", 1, "--batch", str(batch), plain=True)
    many = runs(f"n{n}-b{batch}", n, "--batch", str(batch))
    assert equivalence_error(one, many) <= 1e-12
    assert np.allclose(losses(one), losses(many), rtol=1e-12, atol=0)
    for r in range(1, n):                                         # every rank made the very same update
        assert bit_identical(params(many, 0), params(many, r))


@needs_mpi
def test_float32_two_ranks_equal_one_process_within_rounding(runs):
    one = runs("one-f32", 1, "--dtype", "float32", plain=True)
    two = runs("n2-f32", 2, "--dtype", "float32")
    err = equivalence_error(one, two)
    assert err <= 1e-4, err                                      # float32 rounding, amplified a little by Adam
    assert np.allclose(losses(one), losses(two), rtol=1e-5)


@needs_mpi
def test_reruns_are_bit_identical(runs, tmp_path):
    first = runs("n3-b7", 3, "--batch", "7")
    again = run_ok(3, tmp_path / "again", "--batch", "7")
    assert bit_identical(params(first), params(again))
    assert losses(first) == losses(again)


@needs_mpi
def test_resume_with_the_same_n_continues_bit_for_bit(runs, tmp_path):
    whole = runs("n2-b6", 2, "--batch", "6")
    out = tmp_path / "split"
    run_ok(2, out, "--batch", "6", "--stop-at", "3")
    run_ok(2, out, "--batch", "6", "--resume")                    # every rank reads the checkpoint rank 0 wrote
    for r in range(2):
        assert bit_identical(params(whole, r), params(out, r))
    assert losses(whole) == losses(out)


@needs_mpi
@pytest.mark.parametrize("plant", ["sum", "skip-rank-1"])
def test_the_equivalence_check_catches_a_planted_bug(runs, tmp_path, plant):
    """Summing instead of averaging, or one rank skipping its reduction, is far outside the tolerance."""
    one = runs("one-b6", 1, "--batch", "6", plain=True)
    bad = run_ok(2, tmp_path / plant, "--batch", "6", env={"BERT_FROM_SCRATCH_TEST_PLANT": plant})
    worst = max(equivalence_error(one, bad, r) for r in range(2))
    assert worst > 1e-3, worst                                    # vs <= 1e-12 for the right reduction


@needs_mpi
def test_finetuning_on_three_ranks_equals_one_process(runs):
    """70 examples in batches of 16: the last batch of each epoch (6) splits 2/2/2, the others 5/5/6."""
    one = runs("ft-one", 1, "--task", "finetune", "--batch", "16", plain=True)
    three = runs("ft-n3", 3, "--task", "finetune", "--batch", "16")
    assert rel_error(params(one), params(three)) <= 1e-12            # rank 0 holds the best epoch's weights
    assert np.allclose(losses(one), losses(three), rtol=1e-12, atol=0)          # dev loss after each epoch
    assert (three / "best" / "model.safetensors").is_file() and (three / "results.json").is_file()


@needs_mpi
def test_the_classifier_first_on_three_ranks_equals_one_process(runs):
    """LP-FT's phase 1 runs on every rank over the whole training split (no sharding, nothing to reduce): the
    ranks start phase 2 from the same classifier as one process, and end where it ends."""
    one = runs("ft-lp-one", 1, "--task", "finetune", "--batch", "16", "--classifier-first", "3", plain=True)
    three = runs("ft-lp-n3", 3, "--task", "finetune", "--batch", "16", "--classifier-first", "3")
    assert rel_error(params(one), params(three)) <= 1e-12
    assert np.allclose(losses(one), losses(three), rtol=1e-12, atol=0)
    assert json.loads((three / "results.json").read_text())["classifier_first"]["epochs"] == 3
    assert rel_error(params(one), params(runs("ft-one", 1, "--task", "finetune", "--batch", "16", plain=True))) > 1e-6


@needs_mpi
def test_finetuning_with_dropout_on_three_ranks_equals_one_process(runs, tmp_path):
    """Dropout 0.1 in the encoder and the classifier head: each rank's shard is cut from the global batch padded
    as one process pads it, and its masks are keyed by the global rows, so 3 ranks still equal 1 process; masks
    keyed by the local row (the planted bug) do not."""
    args = ("--task", "finetune", "--batch", "16", "--dropout", "0.1")
    one = runs("ft-drop-one", 1, *args, plain=True)
    three = runs("ft-drop-n3", 3, *args)
    assert rel_error(params(one), params(three)) <= 1e-12
    assert np.allclose(losses(one), losses(three), rtol=1e-12, atol=0)
    bad = run_ok(3, tmp_path / "unkeyed", *args, env={"BERT_FROM_SCRATCH_TEST_PLANT": "no-row-offset"})
    assert rel_error(params(one), params(bad)) > 1e-6


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_dropout_masks_of_shards_are_the_whole_batchs(backend):
    """Every dropout (element-wise and attention) on rows [lo, hi) with row_offset=lo is the whole batch's
    mask on those rows; without the offset it is not (what made dropout-on runs differ across N)."""
    from bert_from_scratch.nn.backend import get_backend

    ops = get_backend(backend)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 5, 8))                                    # (B, T, H)
    q, k, v = (rng.standard_normal((7, 2, 5, 4)) for _ in range(3))       # (B, nh, T, d)
    whole, _ = ops.dropout_forward(x, 0.3, np.random.default_rng(1), True)
    att_whole, _ = ops.attention_forward(q, k, v, None, 0.3, 1234)
    for lo, hi in ((0, 2), (2, 4), (4, 7)):
        part, _ = ops.dropout_forward(x[lo:hi], 0.3, np.random.default_rng(1), True, row_offset=lo)
        assert np.array_equal(part, whole[lo:hi])
        att, _ = ops.attention_forward(q[lo:hi], k[lo:hi], v[lo:hi], None, 0.3, 1234, row_offset=lo)
        assert np.allclose(att, att_whole[lo:hi], rtol=1e-12, atol=1e-14)
    unkeyed, _ = ops.dropout_forward(x[4:7], 0.3, np.random.default_rng(1), True)
    assert not np.array_equal(unkeyed, whole[4:7])
    att_unkeyed, _ = ops.attention_forward(q[4:7], k[4:7], v[4:7], None, 0.3, 1234)
    assert not np.allclose(att_unkeyed, att_whole[4:7])


@needs_mpi
def test_with_dropout_three_ranks_equal_one_process(runs, tmp_path):
    """Dropout 0.1 everywhere: masks keyed by each sequence's global row match; the planted bug (masks keyed
    by the local row) is caught. (The Numba kernels' masks: test_dropout_masks_of_shards_are_the_whole_batchs.)"""
    args = ("--batch", "7", "--dropout", "0.1")
    one = runs("drop-one", 1, *args, plain=True)
    three = runs("drop-n3", 3, *args)
    assert equivalence_error(one, three) <= 1e-12
    bad = run_ok(3, tmp_path / "unkeyed", *args, env={"BERT_FROM_SCRATCH_TEST_PLANT": "no-row-offset"})
    assert equivalence_error(one, bad) > 1e-3


@needs_mpi
def test_zero1_gives_replicated_adamws_parameters_with_half_the_state_per_rank(runs, tmp_path):
    """ZeRO-1 on 2 ranks: bit-identical parameters, each rank holding about half of AdamW's moments;
    its checkpoint (gathered on rank 0) resumes bit for bit."""
    zero_env = {"BERT_FROM_SCRATCH_DDP_ZERO": "1"}
    replicated = runs("n2-b6", 2, "--batch", "6")
    zero = run_ok(2, tmp_path / "zero", "--batch", "6", env=zero_env)
    memory = [json.loads((zero / f"memory-rank{r}.json").read_text())["optimizer_state_bytes"] for r in range(2)]
    full = json.loads((replicated / "memory-rank0.json").read_text())["optimizer_state_bytes"]
    assert sum(memory) == full and max(memory) < 0.6 * full, (memory, full)
    split = tmp_path / "zero-split"
    run_ok(2, split, "--batch", "6", "--stop-at", "3", env=zero_env)
    run_ok(2, split, "--batch", "6", "--resume", env=zero_env)
    for r in range(2):
        assert bit_identical(params(replicated, r), params(zero, r))
        assert bit_identical(params(replicated, r), params(split, r))
    nudged = {k: v.copy() for k, v in params(zero).items()}                   # the comparison can fail:
    first = next(iter(nudged))
    nudged[first].flat[0] = np.nextafter(nudged[first].flat[0], np.inf)      # one ulp of one value
    assert not bit_identical(params(replicated), nudged)


@needs_mpi
def test_frozen_word_embeddings_stay_put_on_every_rank_replicated_and_zero1(runs, tmp_path):
    """--freeze-word-embeddings under mpiexec: 2 ranks (replicated AdamW, and ZeRO-1, whose shards must pass the
    frozen name to the rank that owns it) equal one process, and the embeddings keep their start."""
    from bert_from_scratch.config import BertConfig
    from bert_from_scratch.model import BertForPreTraining
    from bert_from_scratch.model.heads import WORD_EMBEDDINGS

    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    start = BertForPreTraining(cfg, seed=0, dtype=np.float64).params[WORD_EMBEDDINGS]      # the driver's model
    args = ("--batch", "6", "--freeze-word-embeddings")
    one = runs("freeze-one", 1, *args, plain=True)
    two = run_ok(2, tmp_path / "freeze-n2", *args)
    zero = run_ok(2, tmp_path / "freeze-zero", *args, env={"BERT_FROM_SCRATCH_DDP_ZERO": "1"})
    assert equivalence_error(one, two) <= 1e-12
    assert np.array_equal(params(one)[WORD_EMBEDDINGS], start)
    for r in range(2):
        assert bit_identical(params(two, r), params(zero, r))
        assert np.array_equal(params(zero, r)[WORD_EMBEDDINGS], start)
    free = runs("n2-b6", 2, "--batch", "6")
    assert not np.array_equal(params(free)[WORD_EMBEDDINGS], start)


# ---------------------------------------------------------------------------------------------------------
# Failures: the job ends on every rank, the rank is named, the checkpoint stays whole
# ---------------------------------------------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("how", ["kill", "raise"])
def test_a_rank_that_dies_ends_the_job_quickly_and_keeps_the_checkpoint(tmp_path, how):
    from bert_from_scratch.model import BertForPreTraining
    from bert_from_scratch.training.checkpoints import find_checkpoint

    out = tmp_path / how
    t0 = time.perf_counter()
    p = launch(2, out, "--fail-rank", "1", "--fail-step", "3", "--fail-how", how, timeout=60)
    elapsed = time.perf_counter() - t0
    assert p.returncode != 0
    assert elapsed < 30, elapsed                                  # seconds, not a hang
    text = p.stdout + p.stderr
    if how == "raise":
        assert "rank 1 of 2 failed (RuntimeError: planted failure)" in text, text[-2000:]
    else:                       # the launcher names the killed process; the job's first line says its rank
        pid = re.search(r"PID (\d+)", text).group(1)
        assert f"rank 1: pid {pid} on" in text, text[-2000:]
    state = json.loads((find_checkpoint(out) / "trainer_state.json").read_text())
    # step 2 finished everywhere; rank 0 may have been killed while writing its checkpoint: then step 1's is kept
    assert state["step"] in (1, 2)
    assert BertForPreTraining.from_pretrained(find_checkpoint(out)).num_parameters() > 0


@needs_mpi
def test_ranks_started_with_different_arguments_are_refused_at_the_start(tmp_path):
    out = tmp_path / "mismatch"
    cmd = [MPIEXEC, "-n", "1", sys.executable, str(DRIVER), str(out), "--seed", "0", ":",
           "-n", "1", sys.executable, str(DRIVER), str(out), "--seed", "1"]
    p = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode != 0
    lines = [line for line in p.stderr.splitlines() if "different arguments" in line]
    assert len(lines) == 1, p.stderr[-2000:]                      # said once, by rank 0
    assert "model (rank 1)" in lines[0] and "options (rank 1)" in lines[0]
    assert not (out / "checkpoint").exists()                      # refused before any step


# ---------------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------------
@needs_mpi
def test_mpiexec_bert_from_scratch_pretrain_runs_and_reports_once(tmp_path):
    exe = Path(sys.executable).parent / "bert-from-scratch"
    out = tmp_path / "cli"
    cmd = [MPIEXEC, "-n", "2", str(exe), "pretrain", "--corpus", "python-docs", "--steps", "2", "--batch-size", "4",
           "--seq-len", "32", "--vocab-size", "300", "--layers", "1", "--hidden", "32", "--heads", "2",
           "--intermediate", "64", "--out", str(out), "--no-progress", "--backend", "numpy"]
    p = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("Held-out results after 2 steps") == 1          # rank 0's report only
    assert "GFLOP/s (float32) per process x 2 processes;" in p.stdout      # the estimate counts both ranks
    assert json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"] == 2


SHARE_SCRIPT = """
import sys, json
from bert_from_scratch.distributed.job import digest
from bert_from_scratch.distributed.world import get_world
from bert_from_scratch.training import pretrain_job

world = get_world()
calls = []
def prepare(*args, **kw):
    calls.append(world.rank)
    return real(*args, **kw)
real, pretrain_job.prepare_pretraining_data = pretrain_job.prepare_pretraining_data, prepare
kw = dict(corpus="python-docs", vocab_size=300, max_seq_length=32, dupe_factor=1, seed=0, log=lambda m: None,
          count_vectors_dim=8)
data = pretrain_job.prepare_pretraining_data(**kw) if world.is_root else None
shared = pretrain_job.share_from_root(data, world)
own = real(**kw)                                 # what this rank would have prepared itself
same = (digest(shared.train) == digest(own.train) and digest(shared.eval) == digest(own.eval)
        and shared.tokenizer.ids_to_tokens == own.tokenizer.ids_to_tokens
        and shared.word_vectors.tobytes() == own.word_vectors.tobytes()
        and (shared.n_train_docs, shared.n_eval_docs) == (own.n_train_docs, own.n_eval_docs))
print(json.dumps({"rank": world.rank, "prepared": calls, "same": same,
                  "dtypes": sorted({str(v.dtype) for v in shared.train.values()})}))
"""


@needs_mpi
def test_rank_0_alone_prepares_the_data_and_every_rank_gets_the_same(tmp_path):
    """share_from_root: rank 0 prepares, the other ranks receive arrays and tokenizer equal to what they would
    have prepared themselves (digests of every array, the vocabulary, the document counts, the count vectors
    of --embeddings-init counts)."""
    p = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", SHARE_SCRIPT], env=clean_env(), capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    reports = sorted(rank_reports(p.stdout),
                     key=lambda r: r["rank"])
    assert [r["rank"] for r in reports] == [0, 1]
    assert reports[0]["prepared"] == [0] and reports[1]["prepared"] == []     # rank 1 never prepared
    assert all(r["same"] for r in reports)
    assert reports[1]["dtypes"] == ["float32", "int64"]


@needs_mpi
def test_ranks_asked_for_different_data_are_refused_before_preparing_it(tmp_path):
    exe = Path(sys.executable).parent / "bert-from-scratch"
    common = ["pretrain", "--corpus", "python-docs", "--steps", "2", "--batch-size", "4", "--seq-len", "32",
              "--layers", "1", "--hidden", "32", "--heads", "2", "--intermediate", "64", "--no-progress",
              "--backend", "numpy", "--out", str(tmp_path / "run")]
    cmd = [MPIEXEC, "-n", "1", str(exe), *common, "--vocab-size", "300", ":",
           "-n", "1", str(exe), *common, "--vocab-size", "301"]
    p = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode != 0
    lines = [line for line in p.stderr.splitlines() if "different arguments" in line]
    assert len(lines) == 1 and "data_options (rank 1)" in lines[0], p.stderr[-2000:]
    assert "vocabulary:" not in p.stdout                                   # refused before any preparation


@needs_mpi
def test_bench_distributed_prints_its_table(capsys, tmp_path):
    from bert_from_scratch.bench import distributed as bench

    out = tmp_path / "rows.json"
    assert bench.main(["--ranks", "2", "--layers", "1", "--hidden", "32", "--batch", "4", "--seq", "16",
                       "--steps", "1", "--warmup", "1", "--backend", "numpy", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tokens/s" in text and "efficiency" in text and "MB reduced/step" in text
    rows = json.loads(out.read_text())
    assert [r["ranks"] for r in rows] == [1, 2]                   # 1 rank is always the baseline
    assert rows[0]["overlap"]["bytes"] == 0 and rows[1]["overlap"]["bytes"] > 0
    body = text.strip().splitlines()[-2:]
    assert body[0].split()[0] == "1" and body[1].split()[0] == "2" and body[0].split()[2] == "100.0%"
