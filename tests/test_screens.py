"""docs/screens.py, the checkpoint edits behind the transfer screens in docs/results.md: each changes exactly the
tensors it names, as it says, and leaves every other tensor bit-for-bit."""
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from bert_from_scratch.checkpoint import load_safetensors

SPEC = importlib.util.spec_from_file_location("screens", Path(__file__).parents[1] / "docs" / "screens.py")
screens = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(screens)


def _changed(a: dict, b: dict) -> set:
    assert a.keys() == b.keys()
    return {n for n in a if not np.array_equal(a[n], b[n])}


def test_reinit_changes_only_the_matching_tensors_to_berts_init(tiny_review_checkpoint, tmp_path):
    folder = tiny_review_checkpoint[0]
    before = load_safetensors(folder / "model.safetensors")
    names = screens.reinit(folder, tmp_path / "qk", r"attention\.self\.(query|key)")
    after = load_safetensors(tmp_path / "qk" / "model.safetensors")
    assert len(names) == 8 and all(re.search(r"self\.(query|key)\.(weight|bias)$", n) for n in names)
    assert _changed(before, after) == {n for n in names if n.endswith("weight")}   # the biases start at 0 too
    for n in names:
        if n.endswith("bias"):
            assert not after[n].any()
        else:
            assert abs(after[n].std() - 0.02) < 0.005 and after[n].dtype == before[n].dtype
    ln = screens.reinit(folder, tmp_path / "ln", r"encoder\.layer\.0\.output\.LayerNorm")
    after = load_safetensors(tmp_path / "ln" / "model.safetensors")
    assert (after[ln[0]] == 0).all() and (after[ln[1]] == 1).all()            # sorted: bias, weight
    with pytest.raises(SystemExit, match="no tensor name matches"):
        screens.reinit(folder, tmp_path / "none", "no_such_tensor")
    with pytest.raises(SystemExit, match="exists"):
        screens.reinit(folder, tmp_path / "qk", "query")                       # never over an earlier result


def test_scale_embeddings_scales_the_word_embeddings_alone(tiny_review_checkpoint, tmp_path):
    folder = tiny_review_checkpoint[0]
    before = load_safetensors(folder / "model.safetensors")
    assert screens.scale_embeddings(folder, tmp_path / "x3", "3") == 3.0
    after = load_safetensors(tmp_path / "x3" / "model.safetensors")
    assert _changed(before, after) == {screens.WORD_EMBEDDINGS}
    np.testing.assert_allclose(after[screens.WORD_EMBEDDINGS], 3 * before[screens.WORD_EMBEDDINGS], rtol=1e-6)
    screens.scale_embeddings(tmp_path / "x3", tmp_path / "init", "init")       # back to BERT's init size
    E = load_safetensors(tmp_path / "init" / "model.safetensors")[screens.WORD_EMBEDDINGS]
    np.testing.assert_allclose(np.median(np.linalg.norm(E, axis=1)), 0.02 * np.sqrt(E.shape[1]), rtol=1e-5)


def test_pretrain_frozen_trains_everything_but_the_word_embeddings(count_vector_corpus, tmp_path):
    from bert_from_scratch.training.pretrain_job import run_pretraining

    job = dict(corpus=str(count_vector_corpus), steps=3, batch_size=4, vocab_size=400, warmup=0, log=lambda m: None,
               word_embeddings_std=0.02, count_window=5)         # the screen's recipe (the main job's: 0.1, 20)
    start_job = dict(job, steps=1, warmup=1)                     # one update at learning rate 0: the start itself
    run_pretraining(out=tmp_path / "start", embeddings_init="counts", progress=False, **start_job)
    screens.pretrain_frozen(tmp_path / "frozen", **job)
    run_pretraining(out=tmp_path / "free", embeddings_init="counts", progress=False, freeze_word_embeddings=False,
                    **job)                                                                               # not frozen
    start, frozen, free = (load_safetensors(tmp_path / run / "checkpoint" / "model.safetensors")
                           for run in ("start", "frozen", "free"))
    assert _changed(start, frozen) == _changed(start, free) - {screens.WORD_EMBEDDINGS}
    assert screens.WORD_EMBEDDINGS in _changed(start, free) and len(_changed(start, frozen)) > 20


def test_pretrain_frozen_takes_a_presets_steps_and_vocabulary(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(screens, "pretrain_frozen", lambda out, **job: calls.append(dict(job, out=out)) or
                        {"held_out_mlm_accuracy": 0.0, "held_out_nsp_accuracy": 0.0})
    screens.main(["pretrain-frozen", str(tmp_path / "long"), "--preset", "long"])
    screens.main(["pretrain-frozen", str(tmp_path / "default")])
    screens.main(["pretrain-frozen", str(tmp_path / "10k"), "--preset", "long", "--steps", "10000",
                  "--dupe-factor", "4"])
    assert calls == [{"out": str(tmp_path / "long"), "steps": 5000, "vocab_size": 16000},   # not the preset's out
                     {"out": str(tmp_path / "default")},                        # the main job, as before
                     {"out": str(tmp_path / "10k"), "steps": 10000, "vocab_size": 16000, "dupe_factor": 4}]
    with pytest.raises(SystemExit):
        screens.main(["pretrain-frozen", str(tmp_path / "x"), "--preset", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_tapt_starts_from_the_source_weights_and_trains_all_but_the_word_embeddings(count_vector_corpus, tmp_path):
    from bert_from_scratch.training.pretrain_job import run_pretraining

    corpus = count_vector_corpus
    job = dict(steps=3, batch_size=4, warmup=0, log=lambda m: None)
    run_pretraining(out=tmp_path / "src", corpus=str(corpus), vocab_size=400, hidden=32, heads=2, intermediate=64,
                    progress=False, **job)
    src = load_safetensors(tmp_path / "src" / "checkpoint" / "model.safetensors")
    screens.tapt(tmp_path / "src", tmp_path / "start", corpus=str(corpus), **dict(job, steps=1, warmup=1))  # lr 0
    screens.tapt(tmp_path / "src", tmp_path / "tapt", corpus=str(corpus), **job)
    start, tapt = (load_safetensors(tmp_path / run / "checkpoint" / "model.safetensors") for run in ("start", "tapt"))
    assert _changed(src, start) == set()                                # SRC's weights, its shape and vocabulary
    changed = _changed(src, tapt)
    assert screens.WORD_EMBEDDINGS not in changed and len(changed) > 20
    assert (tmp_path / "tapt" / "checkpoint" / "vocab.txt").read_text() == \
        (tmp_path / "src" / "checkpoint" / "vocab.txt").read_text()


def test_tapt_passes_sentiment_masking_on(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(screens, "tapt", lambda src, out, **job: seen.append(job) or
                        {"held_out_mlm_accuracy": 0.1, "held_out_nsp_accuracy": 0.6})
    screens.main(["tapt", "src", "out", "--corpus", "bbc", "--dupe-factor", "1", "--sentiment-masking"])
    screens.main(["tapt", "src", "out"])
    assert [job["sentiment_masking"] for job in seen] == [True, False]
    assert seen[0]["corpus"] == "bbc" and seen[0]["dupe_factor"] == 1
    assert "held-out MLM 0.1000" in capsys.readouterr().out


def test_count_probe_reads_dev_only_and_the_weight_changes_the_vectors(count_vector_corpus, tmp_path, monkeypatch):
    """The screen behind ``--count-window`` and ``--count-upweight``: one cell recomputed by hand; test never read."""
    from bert_from_scratch.data import labeled
    from bert_from_scratch.training import count_vectors as cv
    from bert_from_scratch.training.pretrain_job import run_pretraining

    run_pretraining(corpus=str(count_vector_corpus), out=tmp_path / "src", steps=1, warmup=1, batch_size=4,
                    vocab_size=400, log=lambda m: None, progress=False)
    real = labeled.load_classification("rotten_tomatoes")
    poisoned = type(real)(**{**vars(real), "test": None})                  # reading test would raise
    monkeypatch.setattr(labeled, "load_classification", lambda name: poisoned)
    calls = []
    monkeypatch.setattr(cv, "count_vectors", lambda *a: calls.append(a[3:]) or np.random.default_rng(
        int(a[3] * 10 + a[5])).standard_normal((a[1], a[2])))
    out = screens.count_probe(tmp_path / "src", windows=(2, 5), weights=(1, 3), corpus=str(count_vector_corpus),
                              source=str(count_vector_corpus), subsets=2, log=lambda m: None)
    assert [(w, k) for w, _, k in calls] == [(2, 1.0), (2, 3.0), (5, 1.0), (5, 3.0)]
    assert set(out) == {(2, 1), (2, 3), (5, 1), (5, 3)} and all(0.3 < v[0] < 0.8 for v in out.values())
