"""Agreement with Hugging Face on identical weights, and checkpoint loading/saving.

A ``transformers.BertForPreTraining`` with random weights is saved with ``save_pretrained`` and
loaded with our ``from_pretrained``: loss, both logits and every parameter's gradient must match
torch's autograd (dropout off). float64 agrees to ~1e-13 relative (the same arithmetic in another
order); float32 to ~1e-5, and we allow 1e-4.
"""
import json

import numpy as np
import pytest

from bert_from_scratch.checkpoint import CheckpointError
from bert_from_scratch.model import BertForPreTraining, BertForSequenceClassification, BertModel
from conftest import requires_transformers
from test_model import tiny_batch, tiny_config

TINY_HF = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=16, initializer_range=0.2)


def rel_err(ours, theirs, floor):
    return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), floor))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(**TINY_HF, attn_implementation="eager")
    model = transformers.BertForPreTraining(cfg).eval()
    with torch.no_grad():   # non-trivial biases and LayerNorm parameters, so their gradients are tested too
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("hf_bert")
    model.save_pretrained(folder)
    return folder, model


def torch_step(hf_model, dtype, batch, with_labels=True):
    import torch
    m = hf_model.to(getattr(torch, dtype))
    m.zero_grad()
    ids, tt, mask, labels, nsl = (torch.tensor(a) for a in batch)
    kw = dict(labels=labels, next_sentence_label=nsl) if with_labels else {}
    out = m(input_ids=ids, token_type_ids=tt, attention_mask=mask, **kw)
    if with_labels:
        out.loss.backward()
    return out, {n: p.grad.double().numpy() if p.grad is not None else None for n, p in m.named_parameters()}


@requires_transformers
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_loss_logits_and_every_gradient_match_hugging_face(hf_folder, dtype, tol, backend):
    folder, hf_model = hf_folder
    ours = BertForPreTraining.from_pretrained(folder, dtype=getattr(np, dtype), backend=backend)
    batch = tiny_batch()
    out = ours.forward(*batch)
    grads = ours.backward()
    theirs, their_grads = torch_step(hf_model, dtype, batch)
    assert abs(out.loss - theirs.loss.item()) <= tol * abs(theirs.loss.item())
    assert set(their_grads) == set(grads), "same parameters, same names"
    for name, g in their_grads.items():
        # key.bias has a true gradient of exactly 0 (softmax ignores per-row constants): compare absolutely
        assert rel_err(grads[name].astype(np.float64), g, floor=1e-2) <= tol, name
    # logits: HF computes MLM logits at every position; ours at the labelled ones match those rows
    labels = batch[3]
    pos = np.nonzero(labels != -100)
    hf_mlm = theirs.prediction_logits.detach().double().numpy()
    assert rel_err(out.prediction_logits.astype(np.float64), hf_mlm[pos], 1e-3) <= tol
    assert rel_err(out.seq_relationship_logits.astype(np.float64),
                   theirs.seq_relationship_logits.detach().double().numpy(), 1e-3) <= tol


@requires_transformers
def test_the_comparison_rejects_a_planted_bug(hf_folder):
    """The same comparison fails when one backward is wrong (LayerNorm without its mean term): a backend
    built with the wrong function, passed to the model like any other."""
    import dataclasses

    from bert_from_scratch.nn import layers
    from bert_from_scratch.nn.backend import get_backend

    def layernorm_backward_missing_mean(dy, cache):
        xhat, rstd, gamma = cache
        dx, dgamma, dbeta = layers.layernorm_backward(dy, cache)
        dxhat = dy * gamma
        return dx + dxhat.mean(axis=-1, keepdims=True) * rstd, dgamma, dbeta     # BUG: mean term undone
    planted = dataclasses.replace(get_backend("numpy"), layernorm_backward=layernorm_backward_missing_mean)
    folder, hf_model = hf_folder
    ours = BertForPreTraining.from_pretrained(folder, dtype=np.float64, backend=planted)
    batch = tiny_batch()
    ours.forward(*batch)
    grads = ours.backward()
    _, their_grads = torch_step(hf_model, "float64", batch)
    worst = max(rel_err(grads[n], g, floor=1e-2) for n, g in their_grads.items())
    assert worst > 1e-3


@requires_transformers
def test_all_position_logits_and_hidden_states_match(hf_folder):
    folder, hf_model = hf_folder
    ours = BertForPreTraining.from_pretrained(folder, dtype=np.float64)
    batch = tiny_batch()
    out = ours.forward(*batch[:3], output_hidden_states=True, output_attentions=True)
    theirs, _ = torch_step(hf_model, "float64", batch, with_labels=False)
    import torch
    with torch.no_grad():
        ids, tt, mask = (torch.tensor(a) for a in batch[:3])
        full = hf_model(input_ids=ids, token_type_ids=tt, attention_mask=mask, output_hidden_states=True,
                        output_attentions=True)
    np.testing.assert_allclose(out.prediction_logits, full.prediction_logits.numpy(), rtol=1e-10, atol=1e-10)
    for a, b in zip(out.hidden_states, full.hidden_states):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-10)
    for a, b in zip(out.attentions, full.attentions):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-12)


@requires_transformers
def test_our_checkpoint_loads_in_hugging_face(tmp_path):
    import torch
    import transformers
    ours = BertForPreTraining(tiny_config(), seed=3)
    ours.save_pretrained(tmp_path)
    hf = transformers.BertForPreTraining.from_pretrained(tmp_path, attn_implementation="eager").eval()
    batch = tiny_batch()
    out = ours.forward(*batch[:3])
    with torch.no_grad():
        ids, tt, mask = (torch.tensor(a) for a in batch[:3])
        theirs = hf(input_ids=ids, token_type_ids=tt, attention_mask=mask)
    np.testing.assert_allclose(out.prediction_logits, theirs.prediction_logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.seq_relationship_logits, theirs.seq_relationship_logits.numpy(), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Checkpoint folders (no torch needed)
# ---------------------------------------------------------------------------------------------
def test_save_load_round_trip_is_exact(tmp_path):
    model = BertForPreTraining(tiny_config(), seed=5)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    again = BertForPreTraining.from_pretrained(tmp_path)
    for name in model.params:
        np.testing.assert_array_equal(model.params[name], again.params[name])
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertForPreTraining"]


def _write(folder, tensors, config):
    from safetensors.numpy import save_file
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.to_json_file(folder / "config.json")


def test_encoder_only_folder_and_old_names(tmp_path):
    cfg = tiny_config()
    enc = BertModel(cfg, seed=2)
    tensors = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in enc.params.items()}
    tensors["embeddings.position_ids"] = np.arange(16)[None]            # a buffer, as real checkpoints have
    _write(tmp_path, tensors, cfg)
    with pytest.warns(UserWarning, match="cls.predictions, cls.seq_relationship.*initialised"):
        full = BertForPreTraining.from_pretrained(tmp_path)
    for k, v in enc.params.items():
        np.testing.assert_array_equal(full.params["bert." + k], v)
    # and a full checkpoint into an encoder-only BertModel / a classifier: heads dropped, said so
    full.save_pretrained(tmp_path / "full")
    with pytest.warns(UserWarning, match="ignored"):
        BertModel.from_pretrained(tmp_path / "full")
    with pytest.warns(UserWarning):
        clf = BertForSequenceClassification.from_pretrained(tmp_path / "full", num_labels=3)
    assert clf.params["classifier.weight"].shape == (3, 32)
    np.testing.assert_array_equal(clf.params["bert.pooler.dense.weight"], full.params["bert.pooler.dense.weight"])


@pytest.mark.parametrize("corrupt, match", [
    (lambda t: t.update({"bert.encoder.layer.0.attention.self.qwery.weight": np.zeros((32, 32), np.float32)}),
     "unknown tensor name.*qwery"),
    (lambda t: t.update({"bert.pooler.dense.weight": np.zeros((32, 31), np.float32)}),
     r"bert.pooler.dense.weight has shape \(32, 31\) but the model expects \(32, 32\)"),
    (lambda t: t.pop("bert.encoder.layer.1.output.dense.weight"), "missing tensor.*layer.1.output.dense.weight"),
])
def test_bad_tensors_are_named(tmp_path, corrupt, match):
    model = BertForPreTraining(tiny_config(), seed=0)
    tensors = dict(model.params)
    corrupt(tensors)
    _write(tmp_path, tensors, model.config)
    with pytest.raises(CheckpointError, match=match):
        BertForPreTraining.from_pretrained(tmp_path)


def test_missing_or_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        BertForPreTraining.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        BertForPreTraining.from_pretrained(tmp_path)
    model = BertForPreTraining(tiny_config(), seed=0)
    model.save_pretrained(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])            # truncated
    with pytest.raises(CheckpointError, match="corrupt checkpoint file"):
        BertForPreTraining.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing checkpoint file"):
        BertForPreTraining.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(CheckpointError, match="not a BERT"):
        BertForPreTraining.from_pretrained(tmp_path)


def test_save_is_atomic(tmp_path, monkeypatch):
    """A crash while writing the weights leaves the previous checkpoint intact."""
    model = BertForPreTraining(tiny_config(), seed=0)
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    import safetensors.numpy as stn

    def crash(tensors, path, metadata=None):
        open(path, "wb").write(b"partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(stn, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        BertForPreTraining(tiny_config(), seed=1).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    BertForPreTraining.from_pretrained(tmp_path)
