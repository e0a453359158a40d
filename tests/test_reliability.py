"""A run folder a user can trust: divergence, kills inside writes, reruns and two runs at once.

Every case runs the real console script in its own process. The kills are made deterministic by a
test hook (``files.TEST_PAUSE_ENV``): the writer creates a marker file at a chosen point of a
checkpoint write and waits there, and the test kills it with SIGKILL once the marker exists.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bert_from_scratch.files import TEST_PAUSE_ENV

SCRIPT = Path(sys.executable).with_name("bert-from-scratch")
TINY = ["--corpus", "python-docs", "--batch-size", "8", "--seq-len", "32", "--vocab-size", "600", "--layers", "1",
        "--hidden", "32", "--heads", "2", "--intermediate", "64", "--no-progress"]


def command(*args) -> list[str]:
    base = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "bert_from_scratch"]
    return base + [str(a) for a in args]


def run(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "MPLBACKEND": "Agg", **(env or {})})


def one_line_error(proc) -> str:
    """Exit status 2 and exactly one line on stderr, the project's error line; returns it."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("bert-from-scratch: error: "), proc.stderr
    return lines[0]


def start_paused(out: Path, point: str, nth: int, *args) -> tuple[subprocess.Popen, Path]:
    """Start a pretraining run that stops at the ``nth`` arrival at ``point`` of a checkpoint write."""
    marker = out.parent / f"{out.name}.{point}.marker"
    proc = subprocess.Popen(command("pretrain", *TINY, "--out", out, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MPLBACKEND": "Agg", TEST_PAUSE_ENV: f"{point}:{nth}:{marker}"})
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the pause: {proc.communicate()}")
        assert time.monotonic() < deadline, "the run never reached the pause"
        time.sleep(0.2)
    return proc, marker


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def debris(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if ".tmp-" in p.name or p.name.startswith(".write_test"))


def saved_step(folder: Path) -> int:
    return json.loads((folder / "trainer_state.json").read_text())["step"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny run of 4 steps with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = run("pretrain", *TINY, "--steps", "4", "--save-every", "2", "--eval-every", "2", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = proc.stdout.splitlines()[0]                   # the machine's matmul rate and the run's estimate
    assert first.startswith("machine: np.matmul at ") and "4 steps of" in first and "min of training" in first
    return out


def copy_run(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_divergence_never_saves_non_finite_weights(finished_run, tmp_path):
    """lr 1e300 makes the first update's weights non-finite while loss and gradient were finite: the run
    stops at once, names the step the kept checkpoint holds, and that checkpoint is finite and serves."""
    out = copy_run(finished_run, tmp_path / "run")
    before = (out / "checkpoint" / "model.safetensors").read_bytes()
    proc = run("pretrain", *TINY, "--steps", "8", "--save-every", "1", "--lr", "1e300", "--resume", "--out", out)
    assert proc.returncode == 1, proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert "diverged at step 4" in message and "non-finite" in message and "step 4) is kept" in message
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == before      # nothing was saved
    from safetensors.numpy import load_file
    assert all(np.isfinite(w).all() for w in load_file(out / "checkpoint" / "model.safetensors").values())
    assert saved_step(out / "checkpoint") == 4
    served = run("fill-mask", "--checkpoint", out, "the [MASK] is a function", "--top-k", "2")
    assert served.returncode == 0 and "nan" not in served.stdout.lower(), served.stderr
    again = run("pretrain", *TINY, "--steps", "6", "--resume", "--out", out)      # and a sane lr resumes
    assert again.returncode == 0, again.stderr[-2000:]


def test_a_checkpoint_with_non_finite_weights_is_refused_by_every_reader(finished_run, tmp_path):
    """One NaN written into a checkpoint by hand: fill-mask and --resume refuse it in one line."""
    from safetensors.numpy import load_file, save_file
    out = copy_run(finished_run, tmp_path / "run")
    weights = load_file(out / "checkpoint" / "model.safetensors")
    name = "bert.encoder.layer.0.output.dense.weight"
    weights[name][0, 0] = np.nan
    save_file(weights, str(out / "checkpoint" / "model.safetensors"), metadata={"format": "pt"})
    message = one_line_error(run("fill-mask", "--checkpoint", out, "the [MASK] is"))
    assert "1 non-finite weight value(s)" in message and name in message
    assert "non-finite" in one_line_error(run("pretrain", *TINY, "--steps", "6", "--resume", "--out", out))


def test_a_rerun_never_replaces_a_checkpoint_without_resume_or_overwrite(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path / "run")
    before = (out / "checkpoint" / "model.safetensors").read_bytes()
    message = one_line_error(run("pretrain", *TINY, "--steps", "2", "--out", out))
    assert "already holds a checkpoint (step 4)" in message and "--resume" in message and "--overwrite" in message
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == before
    replaced = run("pretrain", *TINY, "--steps", "2", "--save-every", "2", "--overwrite", "--out", out)
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert saved_step(out / "checkpoint") == 2


def test_two_runs_on_one_folder_the_second_is_refused_and_a_killed_writer_leaves_nothing(tmp_path):
    """A holds the folder (paused inside its first checkpoint write); B is refused with A's pid; A is
    killed there, leaving a half-written temporary; C finds A's lock stale, removes the debris and runs."""
    out = tmp_path / "run"
    a, _ = start_paused(out, "in-write", 1, "--steps", "4", "--save-every", "2")
    try:
        message = one_line_error(run("pretrain", *TINY, "--steps", "4", "--out", out))
        assert f"in use by another run (process {a.pid})" in message
    finally:
        kill(a)
    assert debris(out) == [f".checkpoint.tmp-{a.pid}"] and not (out / "checkpoint").exists()
    c = run("pretrain", *TINY, "--steps", "4", "--save-every", "2", "--out", out)
    assert c.returncode == 0, c.stderr[-2000:]
    assert f"a lock of process {a.pid} was stale" in c.stdout and f"removed .checkpoint.tmp-{a.pid}" in c.stdout
    assert debris(out) == [] and saved_step(out / "checkpoint") == 4


def test_a_kill_between_the_two_renames_loses_nothing(finished_run, tmp_path):
    """Killed after the old checkpoint was renamed aside and before the new one is in place: readers
    use the complete .checkpoint.old; the next writer puts it back and resumes from it."""
    out = copy_run(finished_run, tmp_path / "run")
    a, _ = start_paused(out, "between-renames", 1, "--steps", "8", "--save-every", "2", "--resume")
    kill(a)
    assert not (out / "checkpoint").exists() and saved_step(out / ".checkpoint.old") == 4
    served = run("fill-mask", "--checkpoint", out, "the [MASK] is a function", "--top-k", "2")
    assert served.returncode == 0, served.stderr
    resumed = run("pretrain", *TINY, "--steps", "8", "--save-every", "2", "--resume", "--out", out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "restored checkpoint from .checkpoint.old" in resumed.stdout and "resumed from" in resumed.stdout
    assert saved_step(out / "checkpoint") == 8 and debris(out) == [] and not (out / ".checkpoint.old").exists()


@pytest.mark.parametrize("args, expected", [
    (["--steps", str(10 ** 21)], "--steps must be in [1, 10,000,000]"),
    (["--seq-len", "100000"], "--seq-len must be in [8, 512]"),
    (["--save-every", "0"], "--save-every must be in [1, "),
    (["--steps", "10", "--warmup", "11"], "--warmup (11) cannot exceed --steps (10)"),
    (["--resume", "--overwrite"], "choose one"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--word-embeddings-std", "0"], "--word-embeddings-std must be a positive number"),
    (["--count-window", "0"], "--count-window must be at least 1"),
    (["--count-upweight", "rt-train=10"], "--count-upweight rt-train: not a part of --corpus python-docs"),
    (["--count-upweight", "python-docs"], "--count-upweight takes SOURCE=K"),
])
def test_options_that_make_a_run_useless_are_refused_before_any_work(args, expected, tmp_path):
    proc = run("pretrain", *TINY, "--out", tmp_path / "run", *args)
    assert expected in one_line_error(proc)
    assert "vocabulary:" not in proc.stdout and not (tmp_path / "run").exists()      # no work was done


def test_the_run_folder_is_checked_before_the_corpus_is_read(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    proc = run("pretrain", *TINY, "--out", blocker / "run")
    assert "not writable" in one_line_error(proc) and "vocabulary:" not in proc.stdout


@pytest.mark.parametrize("top_k, expected", [("0", "--top-k must be at least 1"), ("-3", "--top-k must be at least 1"),
                                             ("999999", "at most the vocabulary size")])
def test_fill_mask_top_k_is_bounded(finished_run, top_k, expected):
    proc = run("fill-mask", "--checkpoint", finished_run, "the [MASK] is", "--top-k", top_k)
    assert expected in one_line_error(proc)


def test_fill_mask_says_when_truncation_cut_the_mask_off(finished_run):
    text = "the function " * 60 + "returns [MASK]"
    message = one_line_error(run("fill-mask", "--checkpoint", finished_run, text))
    assert "truncation cut it off" in message and "beyond the model's 64 positions" in message
    assert "no [MASK]" in one_line_error(run("fill-mask", "--checkpoint", finished_run, "no mask here"))


def test_attention_head_and_layer_are_bounded(tmp_path, finished_run):
    out = tmp_path / "att.png"
    assert "--head must be 0 or more" in one_line_error(run("attention", "a b", "--model", finished_run,
                                                            "--layer", "0", "--head", "-1", "--out", out))
    assert "--layer must be 0 or more" in one_line_error(run("attention", "a b", "--model", finished_run,
                                                             "--layer", "-5", "--out", out))
    ok = run("attention", "a b", "--model", finished_run, "--layer", "-1", "--head", "0", "--out", out)
    assert ok.returncode == 0, ok.stderr
