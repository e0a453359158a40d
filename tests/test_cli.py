"""The command line: the main job end to end on a tiny budget, fill-mask, and one-line errors."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bert_from_scratch.cli import main

TINY = ["--corpus", "python-docs", "--steps", "6", "--batch-size", "8", "--seq-len", "32", "--vocab-size", "600",
        "--layers", "1", "--hidden", "32", "--heads", "2", "--intermediate", "64", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["pretrain", *TINY, "--out", str(out)])
    assert code == 0
    return out


def test_pretrain_end_to_end_writes_a_checkpoint_and_report(tiny_run, capsys):
    ck = tiny_run / "checkpoint"
    for name in ("config.json", "model.safetensors", "vocab.txt", "optimizer.safetensors", "trainer_state.json"):
        assert (ck / name).is_file(), name
    assert (tiny_run / "training_curve.png").stat().st_size > 1000
    import json
    report = json.loads((tiny_run / "results.json").read_text())
    assert report["steps"] == 6
    assert 0 <= report["held_out_mlm_accuracy"] <= 1 and 0 <= report["held_out_nsp_accuracy"] <= 1
    assert report["nsp_chance_accuracy"] == 0.5 and 0 < report["mlm_most_frequent_accuracy"] < 0.5
    for name in ("mlm", "nsp"):                  # the 95% interval brackets the measured accuracy
        lo, hi = report[f"held_out_{name}_accuracy_95ci"]
        assert 0 <= lo <= report[f"held_out_{name}_accuracy"] <= hi <= 1 and hi - lo > 0.01
    assert report["n_eval_sequences"] > 0 and report["n_eval_masked_tokens"] > report["n_eval_sequences"]
    assert report["cpu_steal_share"] is None or 0 <= report["cpu_steal_share"] <= 1


def test_wilson_interval_known_values():
    from bert_from_scratch.training.metrics import wilson_interval
    lo, hi = wilson_interval(0.5, 100)
    assert abs(lo - 0.4038) < 1e-4 and abs(hi - 0.5962) < 1e-4            # the textbook value
    lo, hi = wilson_interval(0.0, 10)
    assert lo == 0.0 and abs(hi - 0.2775) < 1e-4                           # no zero-width interval at 0
    narrow = wilson_interval(0.644, 10_000)
    wide = wilson_interval(0.644, 1_000)
    assert wide[0] < narrow[0] < 0.644 < narrow[1] < wide[1]


def test_fill_mask_prints_top_predictions(tiny_run, capsys):
    assert main(["fill-mask", "--checkpoint", str(tiny_run), "the [MASK] is a function", "--top-k", "3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "%" in line]
    assert len(lines) == 3
    probs = [float(line.split("%")[0]) for line in lines]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.01


def run_error(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and err[-1].startswith("bert-from-scratch: error:"), err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_user_errors_are_one_line(tiny_run, tmp_path, capsys):
    assert "corpus path not found" in run_error(["pretrain", "--corpus", str(tmp_path / "nope")], capsys)
    assert "--steps must be in [1, " in run_error(["pretrain", "--steps", "0"], capsys)
    assert "vocabulary file not found" in run_error(["pretrain", "--vocab", str(tmp_path / "v.txt")], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("   \n\n")
    msg = run_error(["pretrain", *TINY, "--corpus", str(empty), "--out", str(tmp_path / "o")], capsys)
    assert "empty" in msg or "no text" in msg or "document" in msg
    blocker = tmp_path / "file"
    blocker.write_text("x")
    msg = run_error(["pretrain", *TINY, "--out", str(blocker / "sub")], capsys)
    assert "writable" in msg or "cannot" in msg or "directory" in msg
    # fill-mask: no checkpoint, no [MASK], vocab of another model, a folder that is no checkpoint
    assert "not found" in run_error(["fill-mask", "--checkpoint", str(tmp_path / "nope"), "a [MASK]"], capsys)
    assert "no [MASK]" in run_error(["fill-mask", "--checkpoint", str(tiny_run), "no mask here"], capsys)
    import shutil
    other = tmp_path / "other"
    shutil.copytree(tiny_run / "checkpoint", other)
    (other / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    assert "do not belong together" in run_error(["fill-mask", "--checkpoint", str(other), "a [MASK]"], capsys)
    (other / "config.json").write_text("{}")
    (other / "model.safetensors").write_bytes(b"garbage")
    assert "corrupt" in run_error(["fill-mask", "--checkpoint", str(other), "a [MASK]"], capsys)


def test_device_options_are_checked_before_any_work(capsys, monkeypatch):
    import bert_from_scratch.nn.xp as xp
    assert "needs --device gpu" in run_error(["pretrain", "--attention-backend", "cupy"], capsys)
    monkeypatch.setattr(xp, "gpu_available", lambda: False)
    assert "working CUDA GPU" in run_error(["pretrain", "--device", "gpu"], capsys)
    monkeypatch.setattr(xp, "gpu_available", lambda: True)
    assert "runs on the CPU" in run_error(["pretrain", "--device", "gpu", "--attention-backend", "numba"], capsys)


def test_resume_with_another_model_is_refused(tiny_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    args = [a if a != "32" or i != TINY.index("--hidden") + 1 else "48" for i, a in enumerate(TINY)]
    msg = run_error(["pretrain", *args, "--out", str(run), "--resume"], capsys)
    assert "config" in msg and "hidden_size" in msg


def test_console_script_runs():
    """The installed entry point (or python -m) answers --help without a traceback."""
    proc = subprocess.run([sys.executable, "-m", "bert_from_scratch", "--help"], capture_output=True, text=True,
                          env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 0 and "pretrain" in proc.stdout and "fill-mask" in proc.stdout


def test_kernels_import_from_a_plain_checkout():
    """Without the editable install's finder (a checkout on sys.path, as on the GPU machine), the
    package still finds kernels/ as bert_from_scratch.kernels (the symlink bert_from_scratch/kernels),
    and the fused backend is built from it."""
    code = ("import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            "from pathlib import Path; import bert_from_scratch.kernels.cuda_attention as ca; "
            "from bert_from_scratch.nn.backend import get_backend; "
            "print(Path(ca.__file__).resolve()); print(get_backend('auto').name)")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(root / "kernels" / "cuda_attention.py"), "numba"]


# -- fill-mask: a [MASK] cut off by truncation, several masks (issue 16) -------------------------------

def test_fill_mask_helpers_word_number_and_fill():
    from bert_from_scratch.cli.fill_mask import fill, word_number
    text = "a  bc [MASK] d[MASK]"
    assert [word_number(text, i) for i in (0, 3, 6, 14)] == [1, 2, 3, 4]
    assert fill(text, [((14, 20), "##s"), ((6, 12), "x")]) == "a  bc x ds"


def test_fill_mask_names_the_word_of_a_mask_cut_off(tiny_run, capsys):
    text = "the function " * 40 + "returns [MASK]"              # words 1..80, then "returns", then [MASK]: word 82
    message = run_error(["fill-mask", "--checkpoint", str(tiny_run), text], capsys)
    assert "the [MASK] at word 82 is beyond max length 64" in message and "has no [MASK]" not in message
    # one mask kept, one cut off: a note names the lost one, the kept one is filled
    assert main(["fill-mask", "--checkpoint", str(tiny_run), "the [MASK] is " + text, "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "note: the [MASK] at word 85 is beyond max length 64" in out
    assert sum("%" in line for line in out.splitlines()) == 2 and "filled:" not in out


def test_fill_mask_with_several_masks_shows_the_filled_sentence(tiny_run, capsys):
    assert main(["fill-mask", "--checkpoint", str(tiny_run), "the [MASK] is a [MASK].", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[MASK] #1:" and lines[3] == "[MASK] #2:"
    first, second = lines[1].split()[1], lines[4].split()[1]         # the top token of each mask
    assert lines[1].endswith(f"the {first.replace('##', '')} is a [MASK].")
    assert lines[-1] == f"filled: the {first.replace('##', '')} is a {second.replace('##', '')}."
