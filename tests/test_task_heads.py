"""The task models (model/task_models.py) against Hugging Face on identical weights, by finite differences,
and through checkpoints both ways.

For each of BertForMaskedLM, BertForTokenClassification, BertForQuestionAnswering and BertForMultipleChoice:
a ``transformers`` model of that class with random weights is saved and loaded into ours; loss, logits and
every parameter's gradient must equal torch's autograd in float64 to 1e-10 relative (a gradient that is
exactly 0, like the attention key bias's, is compared absolutely). The same comparison rejects a planted bug
in each head's backward. Tiny configs: the file runs in seconds.
"""
import numpy as np
import pytest

from bert_from_scratch.model import (BertForMaskedLM, BertForMultipleChoice, BertForQuestionAnswering,
                                     BertForTokenClassification)
from bert_from_scratch.model import task_models
from bert_from_scratch.model.heads import WORD_EMBEDDINGS
from bert_from_scratch.model.params import Scope
from bert_from_scratch.model.task_heads import (qa_head_backward, qa_head_forward, span_loss_backward,
                                                span_loss_forward)
from bert_from_scratch.nn.gradcheck import gradcheck
from conftest import requires_transformers
from test_hf_reference import TINY_HF, rel_err
from test_model import fixed_rng_loss, tiny_batch, tiny_config

CLASSES = {"BertForMaskedLM": BertForMaskedLM, "BertForTokenClassification": BertForTokenClassification,
           "BertForQuestionAnswering": BertForQuestionAnswering, "BertForMultipleChoice": BertForMultipleChoice}
NUM_TAGS = 5
PAD = 0                                                     # config.pad_token_id


def task_batch(name):
    """(encoder inputs, label kwargs) for each task, from the shared tiny batch (B=3, T=10, padding in rows 1, 2)."""
    ids, tt, mask, mlm_labels, _ = tiny_batch()
    if name == "BertForMultipleChoice":                     # C = 2 choices: the rows and the rows reversed
        inputs = dict(input_ids=np.stack([ids, ids[::-1]], 1), token_type_ids=np.stack([tt, tt[::-1]], 1),
                      attention_mask=np.stack([mask, mask[::-1]], 1))
        return inputs, dict(labels=np.array([1, 0, 1]))
    inputs = dict(input_ids=ids, token_type_ids=tt, attention_mask=mask)
    if name == "BertForMaskedLM":
        return inputs, dict(labels=mlm_labels)
    if name == "BertForTokenClassification":
        tags = np.random.default_rng(5).integers(0, NUM_TAGS, ids.shape)
        tags[mask == 0] = -100                              # padding and [CLS] carry no label
        tags[:, 0] = -100
        return inputs, dict(labels=tags)
    # QA: row 1's end (12 > T) and row 2's start (40) fall outside: clamped to T and ignored; -3 clamps to 0
    return inputs, dict(start_positions=np.array([2, -3, 40]), end_positions=np.array([4, 12, 1]))


def _logits(out):
    if hasattr(out, "start_logits"):
        return [out.start_logits, out.end_logits]
    return [out.logits]


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """name -> (folder holding the HF model's save_pretrained, the HF model in float64)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out = {}
    for i, name in enumerate(CLASSES):
        torch.manual_seed(i)
        cfg = transformers.BertConfig(**TINY_HF, attn_implementation="eager",
                                      num_labels=NUM_TAGS if name == "BertForTokenClassification" else 2)
        model = getattr(transformers, name)(cfg).eval()
        with torch.no_grad():   # non-trivial biases and LayerNorm parameters, so their gradients are tested too
            for pname, p in model.named_parameters():
                if pname.endswith("bias") or "LayerNorm" in pname:
                    p.add_(0.1 * torch.randn_like(p))
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        out[name] = (folder, model.double())
    return out


def compare_with_hf(name, hf_folders, backend="numpy"):
    """Largest relative error of ours against Hugging Face over the loss, the logits and every gradient."""
    import torch

    folder, hf = hf_folders[name]
    ours = CLASSES[name].from_pretrained(folder, dtype=np.float64, backend=backend)
    inputs, labels = task_batch(name)
    out = ours.forward(**inputs, **labels)
    grads = ours.backward()
    hf.zero_grad()
    theirs = hf(**{k: torch.tensor(v) for k, v in {**inputs, **labels}.items()})
    theirs.loss.backward()
    their_grads = {n: p.grad.numpy() for n, p in hf.named_parameters()}
    assert set(their_grads) == set(grads), "same parameters, same names"
    errors = {"loss": abs(out.loss - theirs.loss.item()) / abs(theirs.loss.item())}
    hf_logits = [t.detach().numpy() for t in _logits(theirs)]
    if name == "BertForMaskedLM":                          # ours: the labelled rows only; theirs: every row
        hf_logits = [hf_logits[0][np.nonzero(labels["labels"] != -100)]]
    for k, (a, b) in enumerate(zip(_logits(out), hf_logits)):
        assert a.shape == b.shape
        errors[f"logits{k}"] = rel_err(a, b, 1e-3)
    for n, g in their_grads.items():
        ours_g = grads[n]
        if n.endswith("word_embeddings.weight") and name == "BertForQuestionAnswering":
            # torch's nn.Embedding(padding_idx=pad_token_id) drops the [PAD] row's gradient, which only QA's
            # softmax over every position (padding included) makes non-zero; ours is the true gradient
            # (test_the_pad_row_gets_its_true_gradient): every other row must agree
            ours_g, g = np.delete(ours_g, PAD, axis=0), np.delete(g, PAD, axis=0)
        # key.bias's true gradient is exactly 0 (softmax ignores per-row constants): the floor makes it absolute
        errors[n] = rel_err(ours_g, g, floor=1e-2)
    return errors


@requires_transformers
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", list(CLASSES))
def test_loss_logits_and_every_gradient_match_hugging_face(name, backend, hf_folders):
    errors = compare_with_hf(name, hf_folders, backend)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-10, (worst, errors[worst])


def _forget_tied_decoder(original):
    def planted(dlogits, cache, G, ops):                   # BUG: the decoder's share of the word embeddings lost
        tmp = {}
        dx = original(dlogits, cache, Scope(tmp, G.prefix), ops)
        for k, v in tmp.items():
            if k != WORD_EMBEDDINGS:
                G.tensors[k] = v
        return dx
    return planted


def _bias_from_first_token(original):
    def planted(dlogits, cache, G, ops):                   # BUG: the bias gradient summed over the batch axis only
        dx = original(dlogits, cache, G, ops)
        G.tensors[G.prefix + "bias"] = dlogits.reshape(dlogits.shape[0], -1, dlogits.shape[-1])[:, 0].sum(0)
        return dx
    return planted


def _choices_misaligned(original):
    def planted(dlogits, cache, G, ops):                   # BUG: (B*C, 1) gradient paired with the wrong rows
        B = dlogits.shape[0] // 2
        return original(dlogits.reshape(B, 2).T.reshape(-1, 1), cache, G, ops)
    return planted


PLANTED = {
    "BertForMaskedLM": ("mlm_head_backward", _forget_tied_decoder),
    "BertForTokenClassification": ("classifier_head_backward", _bias_from_first_token),
    "BertForQuestionAnswering": ("qa_head_backward",
                                 lambda orig: lambda ds, de, cache, G: orig(de, ds, cache, G)),   # BUG: swapped
    "BertForMultipleChoice": ("classifier_head_backward", _choices_misaligned),
}


@requires_transformers
@pytest.mark.parametrize("name", list(CLASSES))
def test_the_comparison_rejects_a_planted_bug_in_each_head(name, hf_folders, monkeypatch):
    function, plant = PLANTED[name]
    monkeypatch.setattr(task_models, function, plant(getattr(task_models, function)))
    errors = compare_with_hf(name, hf_folders)
    assert max(errors.values()) > 1e-3


@requires_transformers
def test_the_pad_row_gets_its_true_gradient(hf_folders):
    """QA's start/end softmax runs over every position, padding included (as Hugging Face's): the [PAD]
    tokens' hidden states reach the loss, so the [PAD] embedding row has a true gradient. torch's
    ``nn.Embedding(padding_idx=0)`` sets it to 0 (the row stays frozen in Hugging Face's training); ours is
    the true gradient, which central differences confirm."""
    import torch

    folder, hf = hf_folders["BertForQuestionAnswering"]
    ours = BertForQuestionAnswering.from_pretrained(folder, dtype=np.float64, backend="numpy")
    inputs, labels = task_batch("BertForQuestionAnswering")
    ours.forward(**inputs, **labels)
    ours_row = ours.backward()[WORD_EMBEDDINGS][PAD]
    hf.zero_grad()
    hf(**{k: torch.tensor(v) for k, v in {**inputs, **labels}.items()}).loss.backward()
    assert not hf.bert.embeddings.word_embeddings.weight.grad[PAD].any()
    assert np.abs(ours_row).max() > 1e-4
    table = ours.params[WORD_EMBEDDINGS]
    for j in np.argsort(-np.abs(ours_row))[:3]:
        old = table[PAD, j]
        table[PAD, j] = old + 1e-6
        plus = ours.forward(**inputs, **labels).loss
        table[PAD, j] = old - 1e-6
        minus = ours.forward(**inputs, **labels).loss
        table[PAD, j] = old
        assert (plus - minus) / 2e-6 == pytest.approx(ours_row[j], rel=1e-6)


@requires_transformers
def test_the_comparison_rejects_a_span_loss_without_its_half(hf_folders, monkeypatch):
    monkeypatch.setattr(task_models, "span_loss_backward",
                        lambda dloss, cache: span_loss_backward(2 * dloss, cache))      # BUG: sum, not mean
    errors = compare_with_hf("BertForQuestionAnswering", hf_folders)
    assert errors["loss"] < 1e-10 and max(errors.values()) > 0.1


@requires_transformers
def test_all_position_logits_without_labels(hf_folders):
    """Without labels the masked-LM head covers every position: (B, T, V), HF's fill-mask logits."""
    import torch

    folder, hf = hf_folders["BertForMaskedLM"]
    ours = BertForMaskedLM.from_pretrained(folder, dtype=np.float64)
    inputs, _ = task_batch("BertForMaskedLM")
    out = ours.forward(**inputs)
    with torch.no_grad():
        theirs = hf(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.numpy()
    assert out.loss is None and out.logits.shape == (3, 10, 100)
    np.testing.assert_allclose(out.logits, theirs, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Finite differences: every parameter of each model (dropout on, fixed masks), and the new head alone
# ---------------------------------------------------------------------------------------------
def make(name, **kw):
    extra = {"num_labels": NUM_TAGS} if name == "BertForTokenClassification" else {}
    return CLASSES[name](tiny_config(), seed=0, dtype=np.float64, **extra, **kw)


@pytest.mark.parametrize("name", list(CLASSES))
def test_every_parameter_by_finite_differences(name):
    model = make(name, backend="numpy")
    inputs, labels = task_batch(name)
    loss = fixed_rng_loss(model, True, **inputs, **labels)
    loss()
    grads = model.backward()
    assert list(grads) == list(model.params)
    report = gradcheck(loss, model.params, grads, h=1e-5, tol=1e-7, max_entries=4)
    assert len(report.checks) == len(model.params)
    report.assert_ok()


def test_qa_head_and_span_loss_by_finite_differences():
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(3, 6, 8))
    params = {"qa_outputs.weight": rng.normal(size=(2, 8)), "qa_outputs.bias": rng.normal(size=2), "seq": seq}
    start, end = np.array([1, 5, 9]), np.array([2, -1, 3])        # 9: ignored (clamped to T=6); -1 -> 0

    def loss():
        s, e, _ = qa_head_forward(params["seq"], Scope(params, "qa_outputs."))
        return float(span_loss_forward(s, e, start, end)[0])
    s, e, c_head = qa_head_forward(seq, Scope(params, "qa_outputs."))
    _, c_loss = span_loss_forward(s, e, start, end)
    grads = {}
    grads["seq"] = qa_head_backward(*span_loss_backward(1.0, c_loss), c_head, Scope(grads, "qa_outputs."))
    gradcheck(loss, params, grads, h=1e-6, tol=1e-8).assert_ok()
    # and the same checker rejects the swapped backward planted above
    bad = {}
    ds, de = span_loss_backward(1.0, c_loss)
    bad["seq"] = qa_head_backward(de, ds, c_head, Scope(bad, "qa_outputs."))
    assert not gradcheck(loss, params, bad, h=1e-6, tol=1e-8).ok


def test_span_loss_clamps_and_ignores_like_hugging_face():
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]]))            # softmax = the probabilities themselves
    loss, _ = span_loss_forward(logits, logits, np.array([7]), np.array([-2]))   # start ignored, end -> 0
    assert loss == pytest.approx(-np.log(0.1) / 2)


# ---------------------------------------------------------------------------------------------
# Checkpoints both ways, training through the one loop, bad input
# ---------------------------------------------------------------------------------------------
@requires_transformers
@pytest.mark.parametrize("name", list(CLASSES))
def test_our_checkpoint_loads_in_hugging_face_and_theirs_in_ours(name, hf_folders, tmp_path):
    import json

    import torch
    import transformers

    ours = CLASSES[name](tiny_config(), seed=3, **({"num_labels": NUM_TAGS} if "Token" in name else {}))
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [name]
    hf, info = getattr(transformers, name).from_pretrained(tmp_path, attn_implementation="eager",
                                                           output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    inputs, _ = task_batch(name)
    with torch.no_grad():
        theirs = hf.eval()(**{k: torch.tensor(v) for k, v in inputs.items()})
    for a, b in zip(_logits(ours.forward(**inputs)), _logits(theirs)):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-5)
    # the reverse: Hugging Face's save_pretrained into our from_pretrained (float32), without a warning
    folder, hf64 = hf_folders[name]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = CLASSES[name].from_pretrained(folder)
    with torch.no_grad():
        theirs = hf64(**{k: torch.tensor(v) for k, v in inputs.items()})
    for a, b in zip(_logits(again.forward(**inputs)), _logits(theirs)):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(CLASSES))
def test_trains_through_the_one_loop(name):
    from bert_from_scratch.training.loop import run_loop
    from bert_from_scratch.training.optim import AdamW

    model = make(name, backend="numpy")
    inputs, labels = task_batch(name)
    batch = {**inputs, **labels}
    first = model.forward(**batch).loss
    state = run_loop(model, AdamW(model.params, lr=1e-3), [batch] * 8, schedule=lambda s: 1e-3, total_steps=8,
                     progress=False)
    assert state.step == 8 and not state.diverged
    assert model.forward(**batch).loss < first


@pytest.mark.parametrize("name, labels, match", [
    ("BertForTokenClassification", {"labels": np.full((3, 10), NUM_TAGS)}, "labels must be -100"),
    ("BertForTokenClassification", {"labels": np.zeros((3, 9), dtype=int)}, "labels has shape"),
    ("BertForQuestionAnswering", {"start_positions": np.array([1, 2, 3])}, "pass both"),
    ("BertForQuestionAnswering", {"start_positions": np.zeros(2, int), "end_positions": np.zeros(2, int)},
     "start_positions has shape"),
    ("BertForMultipleChoice", {"labels": np.array([0, 2, 1])}, "labels must be a choice in"),
    ("BertForMaskedLM", {"labels": np.full((3, 10), 100)}, "labels must be -100"),
])
def test_bad_labels_are_a_clear_value_error(name, labels, match):
    model = make(name)
    inputs, _ = task_batch(name)
    with pytest.raises(ValueError, match=match):
        model.forward(**inputs, **labels)


def test_multiple_choice_needs_three_dimensions_and_backward_needs_a_loss():
    model = make("BertForMultipleChoice")
    with pytest.raises(ValueError, match="input_ids must have 3 dimension"):
        model.forward(tiny_batch()[0])
    model.forward(**task_batch("BertForMultipleChoice")[0])
    with pytest.raises(RuntimeError, match="pass labels"):
        model.backward()
