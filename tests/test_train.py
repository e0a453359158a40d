"""The pretraining loop: bit-for-bit resume, divergence stop, atomic checkpoints, evaluation, errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bert_from_scratch.checkpoint import CheckpointError
from bert_from_scratch.config import BertConfig
from bert_from_scratch.model import BertForPreTraining
from bert_from_scratch.constants import CHECKPOINT_DIR
from bert_from_scratch.files import replace_dir
from bert_from_scratch.training.checkpoints import find_checkpoint
from bert_from_scratch.training.optim import linear_warmup_decay
from bert_from_scratch.training.batch_order import BatchOrder
from bert_from_scratch.training.pretraining import TrainResult, batch_accuracies, evaluate, pretrain, take_batch
from conftest import requires_transformers

V, T = 100, 16
MASK_ID = 4


def tiny_config(**overrides):
    kwargs = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=32)
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def random_arrays(n, seed, T=T):
    """MLM/NSP arrays shaped like pretraining_data.instances_to_arrays, with random tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, (n, T))
    ids[:, 0] = 2                                                   # [CLS]
    lengths = rng.integers(T // 2, T + 1, n)
    attention_mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    ids[attention_mask == 0] = 0                                    # [PAD]
    token_type_ids = ((np.arange(T)[None, :] >= lengths[:, None] // 2) & (attention_mask == 1)).astype(np.int64)
    predicted = (rng.random((n, T)) < 0.2) & (attention_mask == 1)
    predicted[:, 0] = False
    predicted[:, 1] = True                                          # at least one target per sequence
    labels = np.where(predicted, ids, -100)
    ids = np.where(predicted, MASK_ID, ids)
    return {"input_ids": ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
            "labels": labels, "next_sentence_labels": rng.integers(0, 2, n)}


TRAIN = random_arrays(40, 0)
EVAL = random_arrays(12, 1)


def run(out_dir, steps=8, **kwargs):
    model = kwargs.pop("model", None) or BertForPreTraining(tiny_config(), seed=kwargs.pop("model_seed", 0))
    kwargs.setdefault("batch_size", 8)
    kwargs.setdefault("lr", 1e-3)
    kwargs.setdefault("warmup", 2)
    kwargs.setdefault("eval_every", 3)
    kwargs.setdefault("save_every", 2)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("plot", False)
    kwargs.setdefault("log", lambda msg: None)
    result = pretrain(model, kwargs.pop("train", TRAIN), kwargs.pop("eval", EVAL), out_dir, steps, **kwargs)
    return model, result


# ------------------------------------------------------------------------------ resume
def test_interrupted_and_resumed_run_equals_uninterrupted_bit_for_bit(tmp_path):
    """8 steps straight vs 3 steps (stop_at) + resume into a *fresh* model object: identical floats."""
    straight_model, straight = run(tmp_path / "straight", steps=8)
    assert len(straight.losses) == 8 and straight.step == 8

    _, first = run(tmp_path / "split", steps=8, stop_at=3)
    assert first.step == 3 and first.losses == straight.losses[:3]
    other_init = BertForPreTraining(tiny_config(), seed=123)         # weights and dropout rng both differ
    resumed_model, resumed = run(tmp_path / "split", steps=8, resume=True, model=other_init)
    assert resumed.losses == straight.losses                         # exact equality of python floats
    assert resumed.mlm_accuracies == straight.mlm_accuracies
    assert resumed.evals == straight.evals
    for name, value in straight_model.params.items():
        assert np.array_equal(resumed_model.params[name], value), name


def test_resume_after_a_crash_mid_run(tmp_path):
    """A crash (exception in step 6) keeps the step-4 checkpoint; resuming reproduces the straight run."""
    _, straight = run(tmp_path / "straight", steps=8)
    model = BertForPreTraining(tiny_config(), seed=0)
    backward = model.backward
    calls = {"n": 0}

    def crashing_backward():
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("simulated crash")
        return backward()

    model.backward = crashing_backward
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "crash", steps=8, model=model)
    state = json.loads((tmp_path / "crash" / CHECKPOINT_DIR / "trainer_state.json").read_text())
    assert state["step"] == 4
    _, resumed = run(tmp_path / "crash", steps=8, resume=True)
    assert resumed.losses == straight.losses


def test_resume_check_rejects_a_checkpoint_without_the_dropout_rng(tmp_path):
    """The bit-for-bit check can fail: restoring every state but ``model.rng`` changes the losses."""
    _, straight = run(tmp_path / "straight", steps=6)
    run(tmp_path / "split", steps=6, stop_at=3)
    state_file = tmp_path / "split" / CHECKPOINT_DIR / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["model_rng_state"] = np.random.default_rng(99).bit_generator.state
    state_file.write_text(json.dumps(state))
    _, resumed = run(tmp_path / "split", steps=6, resume=True)
    assert resumed.losses[:3] == straight.losses[:3]
    assert resumed.losses[3:] != straight.losses[3:]


def test_batch_order_is_a_permutation_per_epoch_and_restorable():
    order = BatchOrder(n=10, batch_size=3, seed=5)
    epoch0 = [order.next() for _ in range(3)]
    assert len(set(np.concatenate(epoch0).tolist())) == 9            # 3 full batches, no repeats, 1 dropped
    saved = json.loads(json.dumps(order.state()))                    # survives the trip through JSON
    rest = [order.next() for _ in range(4)]                          # crosses into epoch 1
    again = BatchOrder(n=10, batch_size=3, seed=0)
    again.load_state(saved)
    assert all(np.array_equal(a, b) for a, b in zip(rest, [again.next() for _ in range(4)]))
    assert not np.array_equal(np.concatenate(epoch0), np.concatenate(rest[:3]))
    with pytest.raises(CheckpointError, match="batch order cannot be restored"):
        BatchOrder(n=11, batch_size=3, seed=5).load_state(saved)
    with pytest.raises(ValueError, match="larger than the training set"):
        BatchOrder(n=2, batch_size=3, seed=5)


# ------------------------------------------------------------------------------ one step
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_train_step_is_the_clipped_update(backend):
    """``train_step`` hands the clipping factor to the update instead of scaling the gradients first: its weights
    are those of forward, backward, ``clip_grad_norm`` in place and ``AdamW.step``, to the bit, with the clip active.
    The same comparison tells a step without the clip apart."""
    from bert_from_scratch.training.loop import train_step
    from bert_from_scratch.training.optim import AdamW, clip_grad_norm

    rows = take_batch(TRAIN, np.arange(8), np)
    batch = {k: rows[k] for k in ("input_ids", "token_type_ids", "attention_mask", "labels")}
    batch["next_sentence_label"] = rows["next_sentence_labels"]

    def weights(clip):
        model = BertForPreTraining(tiny_config(), seed=0, backend=backend)
        optimizer = AdamW(model.params, lr=1e-3, weight_decay=0.01, backend=model.backend)
        if clip == "loop":
            result = train_step(model, batch, optimizer, 1e-3, max_grad_norm=0.05)
            assert not result.diverged and result.grad_norm > 0.05          # the clip was active
        else:
            model.forward(**batch, training=True)
            grads = model.backward()
            if clip:
                clip_grad_norm(grads, 0.05)
            assert optimizer.step(grads, lr=1e-3)
        return model.params

    loop, by_hand, unclipped = weights("loop"), weights(True), weights(False)
    for name in loop:
        np.testing.assert_array_equal(loop[name], by_hand[name], err_msg=name)
    assert any(not np.array_equal(loop[name], unclipped[name]) for name in loop)


# ------------------------------------------------------------------------------ divergence
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_huge_learning_rate_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path):
    run(tmp_path, steps=8, stop_at=4)
    ckpt = tmp_path / CHECKPOINT_DIR
    files_before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    messages = []
    _, result = run(tmp_path, steps=8, resume=True, lr=1e30, warmup=0, save_every=100, eval_every=100,
                    log=messages.append)
    assert isinstance(result, TrainResult) and result.diverged and result.exit_status == 1
    assert result.step == 5                                          # one huge update, then a non-finite loss
    assert "diverged at step 5" in result.message and "not finite" in result.message
    assert "step 4" in result.message and "kept" in result.message
    assert result.message in messages
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == files_before      # untouched
    reloaded = BertForPreTraining.from_pretrained(ckpt)
    assert all(np.isfinite(v).all() for v in reloaded.params.values())


def test_infinite_gradient_stops_before_the_update(tmp_path):
    model = BertForPreTraining(tiny_config(), seed=0)
    backward = model.backward
    calls = {"n": 0}

    def poisoned_backward():
        calls["n"] += 1
        grads = backward()
        if calls["n"] == 4:
            grads["bert.encoder.layer.1.output.dense.weight"][0, 0] = np.inf
        return grads

    model.backward = poisoned_backward
    _, result = run(tmp_path, steps=8, model=model)
    assert result.diverged and result.step == 3 and len(result.losses) == 3
    assert "gradient norm inf" in result.message
    saved = BertForPreTraining.from_pretrained(tmp_path / CHECKPOINT_DIR)
    state = json.loads((tmp_path / CHECKPOINT_DIR / "trainer_state.json").read_text())
    assert state["step"] == 2                                        # save_every=2: the last good one
    assert all(np.isfinite(v).all() for v in model.params.values())  # the bad update was never applied
    assert not all(np.array_equal(saved.params[k], model.params[k]) for k in model.params)


def test_divergence_before_any_checkpoint_says_so(tmp_path):
    model = BertForPreTraining(tiny_config(), seed=0)
    model.params["cls.seq_relationship.bias"][...] = np.nan
    _, result = run(tmp_path, steps=4, model=model)
    assert result.diverged and result.step == 0 and result.checkpoint_dir is None
    assert "no checkpoint had been written yet" in result.message
    assert not (tmp_path / CHECKPOINT_DIR).exists()


# ------------------------------------------------------------------------------ checkpoints
def test_checkpoint_folder_layout_and_trainer_state(tmp_path):
    from bert_from_scratch.data.tokenizer import Tokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(V - 5)]
    _, result = run(tmp_path, steps=5, tokenizer=Tokenizer(tokens), plot=True)
    ckpt = tmp_path / CHECKPOINT_DIR
    assert result.checkpoint_dir == ckpt
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors", "optimizer.safetensors",
                                                       "tokenizer_config.json", "trainer_state.json", "vocab.txt"]
    assert ckpt.joinpath("vocab.txt").read_text().split("\n")[:5] == tokens[:5]
    state = json.loads(ckpt.joinpath("trainer_state.json").read_text())
    assert state["step"] == 5 and state["history"]["loss"] == result.losses
    assert set(state["model_rng_state"]) >= {"bit_generator", "state"}
    assert state["data_order"]["position"] == 5                      # 40 // 8 = 5 batches: end of epoch 0
    from safetensors.numpy import load_file
    opt = load_file(str(ckpt / "optimizer.safetensors"))
    assert int(opt["step"][0]) == 5 and "exp_avg.bert.embeddings.word_embeddings.weight" in opt
    assert not list(tmp_path.glob(".checkpoint*"))                   # no temporary folders left behind
    png = (tmp_path / "training_curve.png").read_bytes()
    assert result.curve_path == tmp_path / "training_curve.png" and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 10_000
    assert result.tokens_per_second > 0 and result.exit_status == 0 and not result.diverged
    assert result.mlm_accuracy == result.evals[-1]["mlm_accuracy"] and result.evals[-1]["step"] == 5


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    import bert_from_scratch.training.pretraining as train

    run(tmp_path, steps=4, stop_at=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / CHECKPOINT_DIR).iterdir()}

    def broken_save_file(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.numpy.save_file", broken_save_file)
    with pytest.raises(OSError, match="No space left"):
        run(tmp_path, steps=4, resume=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / CHECKPOINT_DIR).iterdir()} == before
    assert find_checkpoint(tmp_path) == tmp_path / CHECKPOINT_DIR
    _, resumed = run(tmp_path, steps=4, resume=True)                 # and it still resumes
    assert resumed.step == 4


def test_crash_between_the_two_renames_still_finds_the_old_checkpoint(tmp_path):
    run(tmp_path, steps=2)
    ckpt = tmp_path / CHECKPOINT_DIR
    old = tmp_path / f".{CHECKPOINT_DIR}.old"
    ckpt.rename(old)                                                 # the state right after the first rename
    assert find_checkpoint(tmp_path) == old
    _, resumed = run(tmp_path, steps=3, resume=True)
    assert resumed.step == 3 and ckpt.is_dir() and not old.exists()
    new = tmp_path / "new"
    new.mkdir()
    (new / "marker").write_text("x")
    replace_dir(new, ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["marker"]


@requires_transformers
def test_trainer_checkpoint_loads_in_transformers_with_the_same_logits(tmp_path):
    import torch
    from transformers import BertForPreTraining as HFBertForPreTraining

    model, _ = run(tmp_path, steps=3)
    hf = HFBertForPreTraining.from_pretrained(tmp_path / CHECKPOINT_DIR).eval()
    batch = take_batch(EVAL, slice(0, 4), np)
    ours = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(batch["input_ids"]), token_type_ids=torch.tensor(batch["token_type_ids"]),
                    attention_mask=torch.tensor(batch["attention_mask"]))
    np.testing.assert_allclose(ours.prediction_logits, theirs.prediction_logits.numpy(), atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(ours.seq_relationship_logits, theirs.seq_relationship_logits.numpy(), atol=2e-4)
    untrained = BertForPreTraining(tiny_config(), seed=0)            # the comparison can fail
    assert not np.allclose(untrained.forward(batch["input_ids"]).seq_relationship_logits,
                           theirs.seq_relationship_logits.numpy(), atol=2e-4)


# ------------------------------------------------------------------------------ evaluation
def test_evaluate_counts_exactly_and_does_not_depend_on_batch_size():
    """Labels built from the model's own argmax: half right by construction, so accuracy is known."""
    model = BertForPreTraining(tiny_config(), seed=3)
    arrays = {k: v.copy() for k, v in EVAL.items()}
    out = model.forward(arrays["input_ids"], arrays["token_type_ids"], arrays["attention_mask"])
    predicted = np.argmax(out.prediction_logits, axis=-1)                    # (N, T)
    rows, cols = np.nonzero(arrays["labels"] != -100)
    right = np.arange(len(rows)) % 3 != 0                                    # 2 of 3 positions right
    arrays["labels"][rows, cols] = np.where(right, predicted[rows, cols], (predicted[rows, cols] + 1) % V)
    nsp_pred = np.argmax(out.seq_relationship_logits, axis=-1)
    nsp_right = np.arange(len(nsp_pred)) < 9                                 # 9 of 12 right
    arrays["next_sentence_labels"] = np.where(nsp_right, nsp_pred, 1 - nsp_pred)
    for batch_size in (5, 12):
        ev = evaluate(model, arrays, batch_size=batch_size)
        assert ev["mlm_accuracy"] == right.mean()
        assert ev["nsp_accuracy"] == 9 / 12
    # the counting helper is order-sensitive: targets taken column-major would be scored wrong
    batch = take_batch(arrays, slice(0, 12), np)
    out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], labels=batch["labels"],
                        next_sentence_label=batch["next_sentence_labels"])
    mc, mn, _, _ = batch_accuracies(out, batch)
    assert mc / mn == right.mean()
    column_major_target = batch["labels"].T[batch["labels"].T != -100]
    assert (np.argmax(out.prediction_logits, -1) == column_major_target).sum() != mc


def test_roc_auc_equals_the_pairwise_definition():
    from bert_from_scratch.training.metrics import roc_auc
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0             # perfect ranking
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0             # reversed
    assert roc_auc([0.5] * 6, [0, 1, 0, 1, 1, 0]) == 0.5                   # all tied: no signal
    assert np.isnan(roc_auc([0.3, 0.4], [1, 1]))                           # one class only
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 7, 300).astype(float)                        # many ties
    labels = (rng.random(300) < 0.4 + 0.05 * scores).astype(int)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert abs(roc_auc(scores, labels) - pairwise) < 1e-12
    assert abs(roc_auc(scores, 1 - labels) - (1 - pairwise)) < 1e-12


def test_evaluate_reports_the_nsp_auc_of_the_logit_margin():
    model = BertForPreTraining(tiny_config(), seed=3)
    out = model.forward(EVAL["input_ids"], EVAL["token_type_ids"], EVAL["attention_mask"])
    margin = out.seq_relationship_logits[:, 1] - out.seq_relationship_logits[:, 0]
    arrays = dict(EVAL, next_sentence_labels=(margin > np.median(margin)).astype(np.int64))
    assert evaluate(model, arrays, batch_size=5)["nsp_auc"] == 1.0         # labels that follow the margin
    arrays["next_sentence_labels"] = 1 - arrays["next_sentence_labels"]
    assert evaluate(model, arrays, batch_size=5)["nsp_auc"] == 0.0


def test_training_lowers_the_loss_on_a_learnable_task(tmp_path):
    """A tiny corpus seen many times: the loss must fall (the optimizer and the model work together)."""
    small = random_arrays(8, 7)
    _, result = run(tmp_path, steps=60, train=small, eval=small, batch_size=8, lr=3e-3, warmup=5,
                    eval_every=60, save_every=60)
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10]) - 1.0
    assert result.mlm_accuracy > 0.3 and result.evals[-1]["loss"] < result.losses[0]


# ------------------------------------------------------------------------------ errors
def test_unwritable_output_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    model = BertForPreTraining(tiny_config(), seed=0)
    model.forward = lambda *a, **k: pytest.fail("training started despite an unwritable output dir")
    with pytest.raises(ValueError, match="output directory .*a_file/out is not writable"):
        run(blocker / "out", model=model)


def test_resume_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is not a training checkpoint"):
        run(tmp_path / "empty", resume=True)
    run(tmp_path / "ok", steps=2)
    other = BertForPreTraining(tiny_config(hidden_size=48, intermediate_size=96), seed=0)
    with pytest.raises(CheckpointError, match="another config.*hidden_size: checkpoint 32 vs model 48"):
        run(tmp_path / "ok", steps=4, resume=True, model=other)
    with pytest.raises(CheckpointError, match="data-order seed 0"):
        run(tmp_path / "ok", steps=4, resume=True, seed=1)
    with pytest.raises(CheckpointError, match="batch order cannot be restored"):
        run(tmp_path / "ok", steps=4, resume=True, batch_size=4)
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "ok" / CHECKPOINT_DIR, broken)
    (broken / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match="optimizer.safetensors is missing"):
        run(tmp_path / "elsewhere", steps=4, resume=broken)
    (broken / "optimizer.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        run(tmp_path / "elsewhere", steps=4, resume=broken)


def test_bad_arrays_and_arguments_are_rejected(tmp_path):
    bad = dict(TRAIN)
    del bad["next_sentence_labels"]
    with pytest.raises(ValueError, match="missing key.*next_sentence_labels"):
        run(tmp_path / "unused", train=bad)
    bad = dict(TRAIN, labels=TRAIN["labels"][:, :5])
    with pytest.raises(ValueError, match=r"\['labels'\] has shape"):
        run(tmp_path / "unused", train=bad)
    bad = dict(TRAIN, labels=np.where(TRAIN["labels"] == -100, -100, V + 3))
    with pytest.raises(ValueError, match="outside"):
        run(tmp_path / "unused", train=bad)
    with pytest.raises(ValueError, match="larger than the training set"):
        run(tmp_path / "bs", batch_size=41)
    with pytest.raises(ValueError, match="warmup"):
        run(tmp_path / "unused", steps=4, warmup=5)
    assert not list(tmp_path.iterdir())                              # rejected before anything was written


def test_mlm_only_leaves_the_nsp_head_to_weight_decay_and_resumes_only_as_mlm_only(tmp_path):
    """--no-nsp: the loss is the masked-LM loss alone (the NSP head gets no gradient, only AdamW's decay)."""
    start = BertForPreTraining(tiny_config(), seed=0)
    w0 = start.params["cls.seq_relationship.weight"].copy()
    model, result = run(tmp_path / "mlm", steps=4, nsp=False, model=start)
    lrs = [linear_warmup_decay(s, 4, 2, 1e-3) for s in range(4)]
    decayed = w0 * np.prod([np.float32(1 - lr * 0.01) for lr in lrs])
    np.testing.assert_allclose(model.params["cls.seq_relationship.weight"], decayed, rtol=1e-6)
    both, with_nsp = run(tmp_path / "both", steps=4)
    assert not np.allclose(both.params["cls.seq_relationship.weight"], decayed, rtol=1e-3)
    assert result.losses[0] < with_nsp.losses[0]                    # the same batch, without the NSP term
    with pytest.raises(CheckpointError, match="next-sentence prediction"):
        run(tmp_path / "mlm", steps=6, resume=True, nsp=True)
