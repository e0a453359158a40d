"""Interop gaps with Hugging Face, each closed and tested (issue 16):

(a) a bfloat16 / float16 ``model.safetensors`` (what ``torch_dtype=bfloat16`` training saves) is read, as
    float32, never called "corrupt"; a truncated one still is;
(b) ``problem_type`` "multi_label_classification" (sigmoid + binary cross-entropy) and "regression"
    (``num_labels=1``, mean squared error) in BertForSequenceClassification: loss, logits and every gradient
    equal Hugging Face's, and the comparison rejects a planted bug;
(c) ``BertModel.from_pretrained`` loads an encoder saved without a pooler (token classification, QA).
"""
import json
import warnings

import numpy as np
import pytest

from bert_from_scratch.checkpoint import CheckpointError, load_safetensors
from bert_from_scratch.model import BertForSequenceClassification, BertForTokenClassification, BertModel
from bert_from_scratch.model import task_heads
from bert_from_scratch.nn.gradcheck import gradcheck
from bert_from_scratch.nn.losses import (bce_with_logits_backward, bce_with_logits_forward, mse_backward,
                                         mse_forward)
from conftest import requires_transformers
from test_hf_reference import TINY_HF, rel_err
from test_model import tiny_batch, tiny_config


def _hf_model(cls_name, seed=0, **cfg_kw):
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(**TINY_HF, attn_implementation="eager", **cfg_kw)
    model = getattr(transformers, cls_name)(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _hf_run(model, ids, tt, mask, **kw):
    import torch
    return model(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(tt), attention_mask=torch.tensor(mask),
                 **{k: torch.tensor(v) for k, v in kw.items()})


# ---------------------------------------------------------------------------------------------
# (a) bfloat16 and float16 checkpoints
# ---------------------------------------------------------------------------------------------
@requires_transformers
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoint_from_hugging_face_loads(dtype, tmp_path):
    import torch

    hf = _hf_model("BertForSequenceClassification", num_labels=3).to(getattr(torch, dtype))
    hf.save_pretrained(tmp_path)
    header = json.loads((tmp_path / "model.safetensors").read_bytes()[8:][:int.from_bytes(
        (tmp_path / "model.safetensors").read_bytes()[:8], "little")])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16" if dtype == "bfloat16" else "F16"}
    ours = BertForSequenceClassification.from_pretrained(tmp_path, dtype=np.float64)
    hf = hf.double()                        # the same rounded weights, widened exactly
    for name, p in hf.named_parameters():
        np.testing.assert_array_equal(ours.params[name], p.detach().numpy(), err_msg=name)
    ids, tt, mask, _, _ = tiny_batch()
    with torch.no_grad():
        theirs = _hf_run(hf, ids, tt, mask).logits.numpy()
    np.testing.assert_allclose(ours.forward(ids, tt, mask).logits, theirs, rtol=1e-10, atol=1e-12)


@requires_transformers
def test_bfloat16_values_are_exact_and_a_truncated_file_is_still_corrupt(tmp_path):
    import torch
    from safetensors.torch import save_file

    values = torch.tensor([[1.0, -2.5, 3.0e38, 1.0e-40], [0.0, -0.0, float("inf"), 0.1]], dtype=torch.bfloat16)
    save_file({"w": values, "i": torch.arange(3)}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    got = load_safetensors(tmp_path / "model.safetensors")
    assert got["w"].dtype == np.float32 and got["w"].shape == (2, 4)
    np.testing.assert_array_equal(got["w"], values.float().numpy())     # bit for bit what torch widens to
    np.testing.assert_array_equal(got["i"], np.arange(3))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-4])
    with pytest.raises(CheckpointError, match="corrupt checkpoint file.*w runs past the end"):
        load_safetensors(tmp_path / "model.safetensors")


def test_an_unsupported_dtype_is_named_not_called_corrupt(tmp_path):
    header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\x00\x01")
    with pytest.raises(CheckpointError, match="w is stored as F8_E4M3, which this reader does not support") as e:
        load_safetensors(tmp_path / "model.safetensors")
    assert "corrupt" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# (b) multi-label classification and regression
# ---------------------------------------------------------------------------------------------
def _problem_case(kind):
    """(HF config kwargs, labels) for each problem type, on the tiny batch (B = 3)."""
    if kind == "multi_label_classification":
        return dict(num_labels=4, problem_type=kind), np.array([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0.5, 0]])
    if kind == "regression":
        return dict(num_labels=1), np.array([0.3, -1.2, 2.0])
    return dict(num_labels=3, problem_type="regression"), np.array([[0.3, -1.0, 2.0], [0, 1, 0], [5, 0, -2.0]])


PROBLEMS = ["multi_label_classification", "regression", "regression-3-outputs"]


def compare_classifier_with_hf(kind, tmp_path):
    cfg_kw, labels = _problem_case(kind)
    hf = _hf_model("BertForSequenceClassification", seed=1, **cfg_kw)
    hf.save_pretrained(tmp_path)
    ours = BertForSequenceClassification.from_pretrained(tmp_path, dtype=np.float64, backend="numpy")
    hf = hf.double()
    ids, tt, mask, _, _ = tiny_batch()
    out = ours.forward(ids, tt, mask, labels=labels)
    grads = ours.backward()
    theirs = _hf_run(hf, ids, tt, mask, labels=labels)
    theirs.loss.backward()
    errors = {"loss": abs(out.loss - theirs.loss.item()) / abs(theirs.loss.item()),
              "logits": rel_err(out.logits, theirs.logits.detach().numpy(), 1e-3)}
    for name, p in hf.named_parameters():
        errors[name] = rel_err(grads[name], p.grad.numpy(), floor=1e-2)   # key.bias: true gradient 0
    return ours, errors


@requires_transformers
@pytest.mark.parametrize("kind", PROBLEMS)
def test_multi_label_and_regression_match_hugging_face(kind, tmp_path):
    ours, errors = compare_classifier_with_hf(kind, tmp_path)
    assert ours.problem_type == (None if kind == "regression" else kind.replace("-3-outputs", ""))
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-10, (worst, errors[worst])


@requires_transformers
@pytest.mark.parametrize("kind, function, planted", [
    ("multi_label_classification", "bce_with_logits_backward",
     lambda dloss, cache: bce_with_logits_backward(dloss, cache) * cache[0].shape[1]),   # BUG: mean over rows only
    ("regression", "mse_backward", lambda dloss, cache: cache[0] / cache[0].size),       # BUG: the 2 forgotten
])
def test_the_comparison_rejects_a_planted_bug(kind, function, planted, tmp_path, monkeypatch):
    monkeypatch.setattr(task_heads, function, planted)
    _, errors = compare_classifier_with_hf(kind, tmp_path)
    assert errors["loss"] < 1e-10 and max(errors.values()) > 1e-3


def test_the_new_losses_by_finite_differences():
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(4, 3)) * 5, rng.uniform(size=(4, 3))
    for forward, backward in ((bce_with_logits_forward, bce_with_logits_backward), (mse_forward, mse_backward)):
        _, cache = forward(z, y)
        grads = {"z": backward(1.0, cache)}
        gradcheck(lambda: float(forward(z, y)[0]), {"z": z}, grads, h=1e-6, tol=1e-8).assert_ok()
        wrong = {"z": grads["z"] * 1.01}
        assert not gradcheck(lambda: float(forward(z, y)[0]), {"z": z}, wrong, h=1e-6, tol=1e-8).ok
    assert float(bce_with_logits_forward(np.array([800.0, -800.0]), np.array([1.0, 0.0]))[0]) == 0.0   # no overflow


@requires_transformers
def test_problem_type_round_trips_and_hugging_face_uses_it(tmp_path):
    import torch
    import transformers

    ours = BertForSequenceClassification(tiny_config(), num_labels=4, seed=0, problem_type="multi_label_classification")
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["problem_type"] == "multi_label_classification"
    again = BertForSequenceClassification.from_pretrained(tmp_path)
    assert again.problem_type == "multi_label_classification"
    _, labels = _problem_case("multi_label_classification")
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, tt, mask, _, _ = tiny_batch()
    with torch.no_grad():
        theirs = _hf_run(hf, ids, tt, mask, labels=labels.astype(np.float32))
    assert again.forward(ids, tt, mask, labels=labels).loss == pytest.approx(theirs.loss.item(), rel=1e-5)


@pytest.mark.parametrize("kw, labels, match", [
    (dict(num_labels=1, problem_type="single_label_classification"), None, "needs num_labels >= 2"),
    (dict(num_labels=3, problem_type="multilabel"), None, "problem_type must be one of"),
    (dict(num_labels=0), None, "num_labels must be a positive integer"),
    (dict(num_labels=3, problem_type="multi_label_classification"), np.array([0, 1, 2]), r"shape \(3,\); expected"),
    (dict(num_labels=2, problem_type="multi_label_classification"), np.full((3, 2), 2.0), r"must be in \[0, 1\]"),
    (dict(num_labels=1), np.array([0.0, np.nan, 1.0]), "labels must be finite"),
    (dict(num_labels=3), np.array([0, 1, 3]), r"labels must be in \[0, 3\)"),
])
def test_bad_problem_types_and_labels_are_clear(kw, labels, match):
    with pytest.raises(ValueError, match=match):
        model = BertForSequenceClassification(tiny_config(), **kw)
        ids, tt, mask, _, _ = tiny_batch()
        model.forward(ids, tt, mask, labels=labels)


def test_float_labels_without_a_problem_type_mean_multi_label_as_in_hugging_face():
    model = BertForSequenceClassification(tiny_config(), num_labels=2, seed=0)
    ids, tt, mask, _, _ = tiny_batch()
    soft = model.forward(ids, tt, mask, labels=np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    z = soft.logits.astype(np.float64)
    expected = np.mean(np.logaddexp(0, z) - z * np.array([[1, 0], [0, 1], [1, 1]]))
    assert soft.loss == pytest.approx(expected, rel=1e-5)
    hard = model.forward(ids, tt, mask, labels=np.array([0, 1, 1]))      # ints: softmax cross-entropy
    assert hard.loss != pytest.approx(soft.loss)


def test_predict_gives_sigmoid_scores_for_a_multi_label_checkpoint(tmp_path, monkeypatch):
    from bert_from_scratch.data.tokenizer import Tokenizer
    from bert_from_scratch.training import classification_models

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    model = BertForSequenceClassification(tiny_config(), num_labels=3, seed=0,
                                          problem_type="multi_label_classification")
    model.label_names = ["a", "b", "c"]
    model.save_pretrained(tmp_path)
    assert Tokenizer.from_vocab_file(tmp_path / "vocab.txt").vocab_size == 100
    (label, scores), = classification_models.predict(tmp_path, ["w1 w2 w3"])
    ids = np.array([[2, 6, 7, 8, 3]])
    from bert_from_scratch.nn.losses import sigmoid
    expected = sigmoid(model.forward(ids).logits.astype(np.float64))[0]
    assert list(scores) == ["a", "b", "c"] and label == "abc"[int(expected.argmax())]
    np.testing.assert_allclose([scores[k] for k in "abc"], expected, rtol=1e-6)
    assert abs(sum(scores.values()) - 1) > 1e-3                 # independent per label, not a softmax


# ---------------------------------------------------------------------------------------------
# (c) encoders without a pooler
# ---------------------------------------------------------------------------------------------
@requires_transformers
def test_bert_model_loads_a_token_classification_checkpoint(tmp_path):
    import torch

    hf = _hf_model("BertForTokenClassification", num_labels=5)
    hf.save_pretrained(tmp_path)
    assert not any("pooler" in k for k in load_safetensors(tmp_path / "model.safetensors"))
    with pytest.warns(UserWarning, match="ignored 2 tensor.*classifier"):
        enc = BertModel.from_pretrained(tmp_path, dtype=np.float64)
    ids, tt, mask, _, _ = tiny_batch()
    out = enc.forward(ids, tt, mask)
    assert out.pooler_output is None
    with torch.no_grad():
        theirs = hf.double().bert(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(tt),
                                  attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    np.testing.assert_allclose(out.last_hidden_state, theirs, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="no pooler"):
        enc.backward(np.ones_like(out.last_hidden_state), np.ones((3, 32)))
    assert set(enc.backward(np.ones_like(out.last_hidden_state))) == set(enc.params)
    # a sequence classifier from the same folder: the pooler is new, and said so (as Hugging Face does)
    with pytest.warns(UserWarning, match="no weights for bert.pooler: initialised"):
        clf = BertForSequenceClassification.from_pretrained(tmp_path)
    assert clf.params["bert.pooler.dense.weight"].shape == (32, 32) and clf.num_labels == 5


@requires_transformers
def test_our_pooler_free_encoder_loads_in_hugging_face(tmp_path):
    import transformers

    enc = BertModel(tiny_config(), seed=0, add_pooling_layer=False)
    assert not any(k.startswith("pooler") for k in enc.params)
    enc.save_pretrained(tmp_path)
    _, info = transformers.BertModel.from_pretrained(tmp_path, add_pooling_layer=False, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = BertModel.from_pretrained(tmp_path)
    assert again.forward(tiny_batch()[0]).pooler_output is None
    # a token-classification model from our pooler-free encoder: nothing missing but the classifier
    with pytest.warns(UserWarning, match="no weights for classifier"):
        BertForTokenClassification.from_pretrained(tmp_path, num_labels=3)


def test_finetuning_from_a_multi_label_checkpoint_trains_single_label(tmp_path):
    """``finetune``'s data are one class per example: its model is single-label whatever the initial folder said."""
    from bert_from_scratch.training.classification_models import load_for_classification

    model = BertForSequenceClassification(tiny_config(), num_labels=3, seed=0,
                                          problem_type="multi_label_classification")
    model.save_pretrained(tmp_path)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    again, _ = load_for_classification(tmp_path, num_labels=3, log=lambda line: None)
    assert again.problem_type == "single_label_classification"
    np.testing.assert_array_equal(again.params["classifier.weight"], model.params["classifier.weight"])
    assert BertForSequenceClassification.from_pretrained(tmp_path).problem_type == "multi_label_classification"
