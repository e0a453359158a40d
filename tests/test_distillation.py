"""Distillation (training/distillation.py, nn/distillation_losses.py): every gradient checked, and the job.

- each loss's backward against central differences in float64, with padding, and a planted bug rejected;
- the whole objective (teacher -> student -> projections -> losses) against central differences on the
  numpy and numba backends, and against torch autograd on Hugging Face ``BertModel``s with our weights;
- the teacher's targets computed beforehand (as the job does) give the on-the-fly loss;
- the PCA initialisation of the embeddings, and the job end to end on a tiny teacher.
"""
import json

import numpy as np
import pytest

from bert_from_scratch.config import BertConfig
from bert_from_scratch.model import BertModel
from bert_from_scratch.nn import distillation_losses as losses
from bert_from_scratch.nn.gradcheck import gradcheck
from bert_from_scratch.nn.layers import softmax_forward
from bert_from_scratch.training.distillation import Distiller, init_embeddings_from_teacher, layer_map
from conftest import requires_transformers

TEACHER = dict(vocab_size=60, hidden_size=24, num_hidden_layers=4, num_attention_heads=6, intermediate_size=48,
               max_position_embeddings=16, initializer_range=0.3)
STUDENT = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
               max_position_embeddings=16, initializer_range=0.3)


def batch(B=3, T=7, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 60, size=(B, T))
    mask = np.ones((B, T), dtype=np.int64)
    mask[1, 4:] = 0                                   # a padded sequence
    ids[mask == 0] = 0
    tt = np.zeros((B, T), dtype=np.int64)
    tt[:, 4:] = 1
    return ids, tt, mask


def distiller(backend="numpy", dtype=np.float64):
    teacher = BertModel(BertConfig(**TEACHER), seed=1, dtype=dtype, backend=backend)
    student = BertModel(BertConfig(**STUDENT), seed=2, dtype=dtype, backend=backend)
    d = Distiller(student, teacher, seed=3)
    for k, v in d.projections.items():               # non-zero biases, so their gradients are tested
        v += 0.1 * np.random.default_rng(4).standard_normal(v.shape)
    return d


# ---------------------------------------------------------------------------------- the two losses alone
def hidden_case(seed=0):
    rng = np.random.default_rng(seed)
    _, _, mask = batch()
    return (rng.standard_normal((3, 7, 5)), rng.standard_normal((8, 5)), rng.standard_normal(8),
            rng.standard_normal((3, 7, 8)), mask)


def check_hidden(backward):
    h_s, w, b, h_t, mask = hidden_case()
    _, cache = losses.hidden_state_loss_forward(h_s, w, b, h_t, mask)
    dh, dw, db = backward(1.0, cache)
    f = lambda: losses.hidden_state_loss_forward(h_s, w, b, h_t, mask)[0]   # noqa: E731
    return gradcheck(f, {"h_s": h_s, "w": w, "b": b}, {"h_s": dh, "w": dw, "b": db}, max_entries=40)


def test_hidden_state_loss_gradients_and_padding():
    check_hidden(losses.hidden_state_loss_backward).assert_ok()
    h_s, w, b, h_t, mask = hidden_case()
    loss, _ = losses.hidden_state_loss_forward(h_s, w, b, h_t, mask)
    h_t2 = h_t.copy()
    h_t2[mask == 0] += 100.0                          # a padding position's target changes nothing
    assert losses.hidden_state_loss_forward(h_s, w, b, h_t2, mask)[0] == pytest.approx(loss, rel=1e-15)
    proj = h_s @ w.T + b
    expected = ((proj - h_t) ** 2)[mask == 1].mean()
    assert loss == pytest.approx(expected, rel=1e-12)


def test_hidden_state_gradcheck_rejects_a_dropped_factor_two():
    def buggy(dloss, cache):
        return losses.hidden_state_loss_backward(0.5 * dloss, cache)     # d(x^2) = x dx: the 2 forgotten
    assert not check_hidden(buggy).ok


def attention_case(seed=0):
    rng = np.random.default_rng(seed)
    _, _, mask = batch()
    bias = np.where(mask[:, None, None, :] == 1, 0.0, -10000.0)
    p_s = softmax_forward(rng.standard_normal((3, 2, 7, 7)) + bias)[0]
    p_t = softmax_forward(rng.standard_normal((3, 6, 7, 7)) + bias)[0]
    return p_s, losses.head_average(p_t), mask


def check_attention(backward):
    p_s, a_t, mask = attention_case()
    _, cache = losses.attention_loss_forward(p_s, a_t, mask)
    f = lambda: losses.attention_loss_forward(p_s, a_t, mask)[0]   # noqa: E731
    return gradcheck(f, {"p_s": p_s}, {"p_s": backward(1.0, cache)}, max_entries=60)


def test_attention_loss_gradients_value_and_zero_at_the_teacher():
    check_attention(losses.attention_loss_backward).assert_ok()
    p_s, a_t, mask = attention_case()
    loss, _ = losses.attention_loss_forward(p_s, a_t, mask)
    a_s = p_s.mean(axis=1)
    rows = [(b, i) for b in range(3) for i in range(7) if mask[b, i]]
    kl = [sum(a_t[b, i, j] * np.log(a_t[b, i, j] / a_s[b, i, j]) for j in range(7) if mask[b, j]) for b, i in rows]
    assert loss == pytest.approx(np.mean(kl), rel=1e-12)
    student_is_teacher = np.repeat(a_t[:, None], 2, axis=1)
    assert losses.attention_loss_forward(student_is_teacher, a_t, mask)[0] == pytest.approx(0.0, abs=1e-12)


def test_attention_gradcheck_rejects_a_gradient_not_shared_by_the_heads():
    def buggy(dloss, cache):
        return losses.attention_loss_backward(dloss, cache) * cache[-1]   # the 1/heads of the mean forgotten
    assert not check_attention(buggy).ok


# ---------------------------------------------------------------------------------- the whole objective
def check_distiller(d, ids, tt, mask):
    d.forward(ids, tt, mask)
    grads = d.backward()
    f = lambda: d.forward(ids, tt, mask).loss   # noqa: E731
    return gradcheck(f, d.params, grads, max_entries=6)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_every_gradient_of_the_objective_matches_central_differences(backend):
    d = distiller(backend)
    assert d.map == [0, 2, 4] and layer_map(2, 6) == [0, 3, 6]
    assert not any("pooler" in k for k in d.params)       # the pooler sees no loss and is not trained
    check_distiller(d, *batch()).assert_ok()


def test_objective_gradcheck_rejects_a_missing_path_through_the_attention(monkeypatch):
    from bert_from_scratch.model import blocks
    monkeypatch.setattr(blocks, "attention_probabilities_backward", lambda dp, p, q, k: (0 * q, 0 * k))
    report = check_distiller(distiller(), *batch())
    assert not report.ok
    assert any(not c.ok and ("query" in c.name or "key" in c.name) for c in report.checks)


def test_targets_computed_beforehand_give_the_same_loss_and_gradients():
    d = distiller()
    ids, tt, mask = batch()
    live = d.forward(ids, tt, mask)
    g_live = d.backward()
    stored = d.forward(ids, tt, mask, teacher=d.teacher_targets(ids, tt, mask))
    g_stored = d.backward()
    assert stored == live
    assert all(np.array_equal(g_live[k], g_stored[k]) for k in g_live)


def torch_comparison(d, tmp_path):
    """Our loss and gradients against torch autograd on HF ``BertModel``s holding the same weights:
    (|loss difference| relative, {parameter: relative gradient error}); the key bias (true gradient 0) absolutely."""
    import torch
    import transformers

    ids, tt, mask = batch()
    out = d.forward(ids, tt, mask)
    ours = d.backward()
    hf = {}
    for name, model in (("teacher", d.teacher), ("student", d.student)):
        model.save_pretrained(tmp_path / name)
        hf[name] = transformers.BertModel.from_pretrained(tmp_path / name, attn_implementation="eager").double()
    proj = {k: torch.tensor(v, requires_grad=True) for k, v in d.projections.items()}
    args = dict(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(tt), attention_mask=torch.tensor(mask),
                output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        t = hf["teacher"](**args)
    s = hf["student"](**args)
    m = torch.tensor(mask, dtype=torch.float64)
    hidden = sum((((s.hidden_states[i] @ proj[f"distill.hidden.{i}.weight"].T + proj[f"distill.hidden.{i}.bias"]
                    - t.hidden_states[j]) ** 2) * m[..., None]).sum() / (m.sum() * TEACHER["hidden_size"])
                 for i, j in enumerate(d.map))
    pair = m[:, :, None] * m[:, None, :]
    attention = 0.0
    for i, j in enumerate(d.map[1:]):
        a_s, a_t = s.attentions[i].mean(dim=1), t.attentions[j - 1].mean(dim=1)
        kl = a_t * (torch.log(a_t.clamp_min(1e-300)) - torch.log(a_s.clamp_min(1e-300)))   # 0 * log 0 at pads
        attention = attention + torch.where(pair > 0, kl, 0.0).sum() / m.sum()
    loss = hidden + attention
    loss.backward()
    theirs = {**{n: p.grad.numpy() for n, p in hf["student"].named_parameters() if p.grad is not None},
              **{k: p.grad.numpy() for k, p in proj.items()}}
    errors = {}
    for name, g in ours.items():
        ref = theirs[name]
        if name.endswith("key.bias"):               # softmax ignores a shift of every score: the true gradient is 0
            errors[name] = float(max(np.abs(g).max(), np.abs(ref).max()))
        else:
            errors[name] = float(np.linalg.norm(g - ref) / max(np.linalg.norm(ref), 1e-12))
    return abs(out.loss - loss.item()) / abs(loss.item()), errors


@requires_transformers
def test_loss_and_gradients_match_torch_autograd_on_hugging_face_models(tmp_path):
    loss_error, errors = torch_comparison(distiller(), tmp_path)
    assert loss_error < 1e-10
    bad = {k: v for k, v in errors.items() if v >= 1e-8}
    assert not bad, bad


@requires_transformers
def test_torch_comparison_rejects_a_planted_bug(tmp_path, monkeypatch):
    from bert_from_scratch.training import distillation

    def forgets_the_heads(dloss, cache):               # the 1/heads of the head average dropped
        return losses.attention_loss_backward(dloss, cache) * cache[-1]
    monkeypatch.setattr(distillation, "attention_loss_backward", forgets_the_heads)
    loss_error, errors = torch_comparison(distiller(), tmp_path)
    assert loss_error < 1e-10                          # the forward is right: only gradients show the bug
    assert errors["encoder.layer.0.attention.self.query.weight"] > 1e-3


def test_embeddings_from_the_teacher_by_pca():
    d = distiller()
    share = init_embeddings_from_teacher(d.student, d.teacher)
    assert 0.0 < share < 1.0
    words = d.student.params["embeddings.word_embeddings.weight"]
    cov = np.cov(words.T)                             # principal components: uncorrelated, decreasing variance
    assert np.allclose(cov - np.diag(np.diag(cov)), 0.0, atol=1e-10)
    assert np.all(np.diff(np.diag(cov)) <= 1e-12)
    same_width = BertModel(BertConfig(**{**STUDENT, "hidden_size": 24, "num_attention_heads": 2}), dtype=np.float64)
    assert init_embeddings_from_teacher(same_width, d.teacher) == pytest.approx(1.0)
    wider = BertModel(BertConfig(**{**STUDENT, "hidden_size": 32}), dtype=np.float64)
    with pytest.raises(ValueError, match="wider than the teacher"):
        init_embeddings_from_teacher(wider, d.teacher)


def test_the_job_trains_a_student_that_fine_tunes(tmp_path):
    from bert_from_scratch.data.tokenizer import Tokenizer
    from bert_from_scratch.training.classification_models import load_for_classification
    from bert_from_scratch.training.distill_job import run_distillation
    from bert_from_scratch.training.run_folder import RunFolderError

    text = tmp_path / "corpus.txt"
    docs = [f"The film number {i} was {'good' if i % 2 else 'bad'}. It ran for {i} minutes and we left happy."
            for i in range(60)]
    text.write_text("\n\n".join(docs), encoding="utf-8")
    tok = Tokenizer.train(docs, vocab_size=200)
    teacher = BertModel(BertConfig(**{**TEACHER, "vocab_size": len(tok), "max_position_embeddings": 64}), seed=1)
    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    logs = []
    report = run_distillation(teacher=str(tmp_path / "teacher"), corpus=str(text), out=tmp_path / "run", steps=40,
                              batch_size=8, lr=3e-3, size="tiny", hidden=16, heads=2, intermediate=32,
                              max_seq_length=32, progress=False, log=logs.append)
    assert report["held_out_after"]["loss"] < 0.5 * report["held_out_before"]["loss"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 40
    model, tokenizer = load_for_classification(tmp_path / "run" / "checkpoint", num_labels=2, log=logs.append)
    assert model.config.hidden_size == 16 and len(tokenizer) == len(tok)
    with pytest.raises(RunFolderError, match="overwrite"):
        run_distillation(teacher=str(tmp_path / "teacher"), corpus=str(text), out=tmp_path / "run", steps=2,
                         progress=False, log=logs.append)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be in"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--warmup", "99", "--steps", "10"], "--warmup (99) cannot exceed --steps (10)"),
    (["--warmup", "-1"], "--warmup must be in"),
    (["--corpus", "no/such/folder"], "corpus path not found"),
])
def test_distill_command_refuses_bad_options_in_one_line(argv, message, capsys, tmp_path):
    from bert_from_scratch.cli import main

    assert main(["distill", "--out", str(tmp_path / "run"), "--teacher", str(tmp_path / "none"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
