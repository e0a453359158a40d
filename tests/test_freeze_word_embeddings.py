"""``pretrain --freeze-word-embeddings``: AdamW leaves the named parameters alone and updates the rest exactly as
before; the job keeps the word embeddings (and so the tied MLM decoder) at their start, records it, refuses to
resume with another choice, and gives the weights of the runs measured in docs/results.md, which put the embeddings
back after every AdamW step (``docs/screens.py pretrain-frozen`` before the option existed)."""
import numpy as np
import pytest

from bert_from_scratch.checkpoint import load_safetensors
from bert_from_scratch.model.heads import WORD_EMBEDDINGS
from bert_from_scratch.training.checkpoints import CheckpointError
from bert_from_scratch.training.optim import AdamW


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {"a": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}


def test_adamw_leaves_frozen_parameters_alone_and_updates_the_rest_as_before():
    free, frozen, start = _params(), _params(), _params()
    grads = {k: v * 0.5 + 1.0 for k, v in _params(1).items()}
    plain, skipping = AdamW(free, lr=1e-2), AdamW(frozen, lr=1e-2, frozen=["a"])
    for _ in range(3):
        plain.step(grads)
        skipping.step(grads)
    assert np.array_equal(frozen["a"], start["a"]) and not np.array_equal(free["a"], start["a"])
    assert np.array_equal(frozen["b"], free["b"]) and not np.array_equal(free["b"], start["b"])
    assert skipping.step_count == 3 and not skipping.exp_avg["a"].any()          # no moments for a frozen tensor
    assert set(skipping.state_dict()) == set(plain.state_dict())                  # the checkpoint format is one
    with pytest.raises(ValueError, match="frozen names no parameter: c"):
        AdamW(_params(), frozen=["a", "c"])


def _weights(folder):
    return load_safetensors(folder / "checkpoint" / "model.safetensors")


def test_the_job_freezes_the_word_embeddings_as_the_measured_runs_did(count_vector_corpus, tmp_path, monkeypatch):
    from bert_from_scratch.training.pretrain_job import run_pretraining

    job = dict(corpus=str(count_vector_corpus), steps=3, batch_size=4, vocab_size=400, warmup=0, log=lambda m: None,
               progress=False, embeddings_init="counts", freeze_word_embeddings=False, word_embeddings_std=0.02)
    run_pretraining(out=tmp_path / "start", **dict(job, steps=1, warmup=1))          # lr 0: the start itself
    report = run_pretraining(out=tmp_path / "option", **dict(job, freeze_word_embeddings=True))[1]
    assert report["word_embeddings_frozen"] is True

    step = AdamW.step

    def put_back(self, grads, lr=None, grad_scale=1.0):        # how docs/results.md's frozen runs were made
        kept = self.params[WORD_EMBEDDINGS].copy()
        finite = step(self, grads, lr, grad_scale)
        self.params[WORD_EMBEDDINGS][...] = kept
        return finite

    monkeypatch.setattr(AdamW, "step", put_back)
    assert run_pretraining(out=tmp_path / "put-back", **job)[1]["word_embeddings_frozen"] is False
    monkeypatch.undo()
    free = run_pretraining(out=tmp_path / "free", **job)[1]
    start, option, put_back_, free = (_weights(tmp_path / r) for r in ("start", "option", "put-back", "free"))
    assert all(np.array_equal(option[n], put_back_[n]) for n in option)            # bit for bit
    assert np.array_equal(option[WORD_EMBEDDINGS], start[WORD_EMBEDDINGS])
    assert not np.array_equal(free[WORD_EMBEDDINGS], start[WORD_EMBEDDINGS])
    assert sum(not np.array_equal(option[n], start[n]) for n in option) > 20        # everything else trains

    with pytest.raises(CheckpointError, match="froze .*word_embeddings.*this run asks for none"):
        run_pretraining(out=tmp_path / "option", resume=True, **dict(job, steps=4))
    with pytest.raises(CheckpointError, match="froze no parameter"):
        run_pretraining(out=tmp_path / "free", resume=True, **dict(job, steps=4, freeze_word_embeddings=True))
    run_pretraining(out=tmp_path / "option", resume=True, **dict(job, steps=4, freeze_word_embeddings=True))
    assert np.array_equal(_weights(tmp_path / "option")[WORD_EMBEDDINGS], start[WORD_EMBEDDINGS])


def test_the_command_line_passes_the_option_and_the_long_frozen_preset_sets_it():
    from bert_from_scratch.cli import build_parser
    from bert_from_scratch.training.presets import resolve_preset

    def resolved(*argv):
        args = build_parser().parse_args(["pretrain", *argv])
        return vars(resolve_preset(args, args.preset))

    assert resolved()["freeze_word_embeddings"] is True                  # the main job since 2026-12-05
    assert resolved("--no-freeze-word-embeddings")["freeze_word_embeddings"] is False
    assert resolved("--preset", "long")["freeze_word_embeddings"] is False
    assert resolved("--freeze-word-embeddings")["freeze_word_embeddings"] is True
    assert resolved("--preset", "long-frozen", "--no-freeze-word-embeddings")["freeze_word_embeddings"] is False
    assert resolved("--no-sentiment-masking")["sentiment_masking"] is False
    assert resolved("--sentiment-masking")["sentiment_masking"] is True
    by_hand = resolved("--preset", "long", "--freeze-word-embeddings", "--embeddings-init", "counts",
                       "--word-embeddings-std", "0.1", "--out", "runs/pretrain-long-frozen")
    assert resolved("--preset", "long-frozen") == dict(by_hand, preset="long-frozen")   # the long run, frozen counts
