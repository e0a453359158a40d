"""The whole model: every parameter's gradient against central differences, and bad input.

The tiny model (2 layers, hidden 32, 4 heads, vocab 100, padding in the batch) is initialised with
std 0.2 instead of 0.02 for these checks: with 0.02 the attention is almost uniform and the query/key
gradients are ~1e-5, where finite-difference rounding noise (~1e-10 absolute) is a 1e-5 relative error;
with 0.2 every gradient is large enough to be checked to ~1e-9 relative.
"""
import numpy as np
import pytest

from bert_from_scratch.config import BertConfig, ConfigError
from bert_from_scratch.nn.gradcheck import gradcheck
from bert_from_scratch.model import BertForPreTraining, BertForSequenceClassification, BertModel

TOL = 1e-7
#: every gradient check runs on the reference and on the fused Numba kernels (nn/backend.py)
BACKENDS = ["numpy", "numba"]


def tiny_config(**kw):
    base = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=16, initializer_range=0.2)
    base.update(kw)
    return BertConfig(**base)


def tiny_batch(seed=1):
    rng = np.random.default_rng(seed)
    B, T = 3, 10
    ids = rng.integers(5, 100, (B, T))
    mask = np.ones((B, T), dtype=np.int64)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0                                       # [PAD]
    tt = np.broadcast_to((np.arange(T) >= 5).astype(np.int64), (B, T)).copy()
    labels = np.full((B, T), -100)
    labels[0, 2], labels[1, 3], labels[2, 1], labels[0, 5] = 7, 9, 11, ids[0, 5]
    ids[0, 2] = ids[1, 3] = 3                                # "[MASK]"-like ids: repeated ids in the batch
    nsl = np.array([0, 1, 0])
    return ids, tt, mask, labels, nsl


def fixed_rng_loss(model, training, **batch):
    """loss() re-seeds the dropout RNG so every call sees the same masks (dropout is then a fixed function)."""
    def loss():
        model.rng = np.random.default_rng(1234)
        return model.forward(training=training, **batch).loss
    return loss


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [False, True], ids=["dropout-off", "dropout-on"])
@pytest.mark.parametrize("heads_rows", [True, False], ids=["last-layer-at-heads-rows", "last-layer-everywhere"])
def test_pretraining_model_every_parameter(training, backend, heads_rows):
    model = BertForPreTraining(tiny_config(), seed=0, dtype=np.float64, backend=backend)
    model.last_layer_at_heads_rows = heads_rows
    assert model.backend.name == backend
    ids, tt, mask, labels, nsl = tiny_batch()
    loss = fixed_rng_loss(model, training, input_ids=ids, token_type_ids=tt, attention_mask=mask, labels=labels,
                          next_sentence_label=nsl)
    loss()
    grads = model.backward()
    assert set(grads) == set(model.params)
    report = gradcheck(loss, model.params, grads, h=1e-5, tol=TOL, max_entries=8)
    assert len(report.checks) == len(model.params)
    report.assert_ok()
    if training:   # dropout really was on: the loss differs from eval mode
        assert loss() != model.forward(ids, tt, mask, labels, nsl, training=False).loss


@pytest.mark.parametrize("backend", BACKENDS)
def test_classifier_every_parameter(backend):
    model = BertForSequenceClassification(tiny_config(), num_labels=3, seed=0, dtype=np.float64, backend=backend)
    ids, tt, mask, _, _ = tiny_batch()
    y = np.array([2, 0, 1])
    loss = fixed_rng_loss(model, True, input_ids=ids, token_type_ids=tt, attention_mask=mask, labels=y)
    loss()
    grads = model.backward()
    gradcheck(loss, model.params, grads, h=1e-5, tol=TOL, max_entries=6).assert_ok()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bert_model_backward_from_hidden_states(backend):
    model = BertModel(tiny_config(), seed=0, dtype=np.float64, backend=backend)
    ids, tt, mask, _, _ = tiny_batch()
    R = np.random.default_rng(3).normal(size=(3, 10, 32))
    Rp = np.random.default_rng(4).normal(size=(3, 32))

    def loss():
        out = model.forward(ids, tt, mask)
        return float((out.last_hidden_state * R).sum() + (out.pooler_output * Rp).sum())
    loss()
    grads = model.backward(R, Rp)
    # the loss sums ~1000 terms of size ~1 (rounding noise ~1e-9 absolute): key.bias, whose true gradient
    # is exactly 0 (softmax ignores a per-row constant), is judged by an absolute 1e-8
    gradcheck(loss, model.params, grads, h=1e-5, tol=TOL, max_entries=5, atol=1e-8).assert_ok()


def test_tied_decoder_gradient_is_the_sum_of_both_uses():
    model = BertForPreTraining(tiny_config(), seed=0, dtype=np.float64)
    ids, tt, mask, labels, nsl = tiny_batch()
    model.forward(ids, tt, mask, labels, nsl)
    full = model.backward()["bert.embeddings.word_embeddings.weight"]
    # the decoder's share alone: backward through the MLM head only
    c = model._cache
    from bert_from_scratch.model.heads import mlm_head_backward
    from bert_from_scratch.model.params import Scope
    dec_only = {}
    mlm_head_backward(model.backend.cross_entropy_backward(1.0, c["mlm_loss"]), c["mlm"], Scope(dec_only, "cls.predictions."),
                      model.backend)
    decoder_share = dec_only["bert.embeddings.word_embeddings.weight"]
    input_share = full - decoder_share
    used = np.unique(ids[mask == 1])
    unused = np.setdiff1d(np.arange(100), np.append(used, 0))
    assert np.abs(input_share[used]).sum() > 0               # the input lookup contributes to used rows
    np.testing.assert_allclose(input_share[unused], 0, atol=1e-15)   # and to nothing else
    assert np.abs(decoder_share[unused]).min() > 0           # the decoder touches every row


def test_float32_matches_float64():
    cfg = tiny_config()
    m64 = BertForPreTraining(cfg, seed=0, dtype=np.float64)
    m32 = BertForPreTraining(cfg, seed=0, dtype=np.float32)
    batch = tiny_batch()
    o64, o32 = m64.forward(*batch), m32.forward(*batch)
    assert o32.prediction_logits.dtype == np.float32
    assert abs(o64.loss - o32.loss) < 1e-4 * abs(o64.loss)
    g64, g32 = m64.backward(), m32.backward()
    for n in g64:
        assert g32[n].dtype == np.float32
        scale = np.linalg.norm(g64[n]) + 1e-4     # key.bias: true gradient 0, float32 noise ~1e-8
        assert np.linalg.norm(g64[n] - g32[n]) / scale < 1e-3, n


def test_prediction_logits_shapes_and_loss_parts():
    model = BertForPreTraining(tiny_config(initializer_range=0.02), seed=0)
    ids, tt, mask, labels, nsl = tiny_batch()
    out = model.forward(ids, tt, mask)
    assert out.prediction_logits.shape == (3, 10, 100) and out.loss is None
    out = model.forward(ids, tt, mask, labels=labels, next_sentence_label=nsl, output_hidden_states=True,
                        output_attentions=True)
    assert out.prediction_logits.shape == (4, 100)
    assert abs(out.loss - (out.mlm_loss + out.nsp_loss)) < 1e-6
    assert abs(out.mlm_loss - np.log(100)) < 0.2 and abs(out.nsp_loss - np.log(2)) < 0.1   # near chance at init
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (3, 10, 32)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (3, 4, 10, 10)
    np.testing.assert_allclose(out.attentions[1].sum(-1), 1, rtol=1e-5)
    assert out.attentions[0][2, :, :, 4:].max() < 1e-6                     # padded keys get no attention


def test_init_follows_bert():
    model = BertForPreTraining(BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=1,
                                          num_attention_heads=4, intermediate_size=128), seed=0)
    w = model.params["bert.embeddings.word_embeddings.weight"]
    assert abs(w.std() - 0.02) < 0.001 and abs(w.mean()) < 0.001
    assert (model.params["bert.encoder.layer.0.attention.output.LayerNorm.weight"] == 1).all()
    assert (model.params["cls.predictions.bias"] == 0).all()
    assert model.params["bert.encoder.layer.0.intermediate.dense.weight"].shape == (128, 64)   # [out, in]
    assert "cls.predictions.decoder.weight" not in model.params                                # tied
    assert model.config.layer_norm_eps == 1e-12 and model.config.hidden_dropout_prob == 0.1


# ---------------------------------------------------------------------------------------------
# Bad input: one clear ValueError naming the problem
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model():
    return BertForPreTraining(tiny_config(), seed=0)


@pytest.mark.parametrize("make, match", [
    (lambda ids: {"input_ids": np.where(ids == ids.max(), 100, ids)}, "token id out of range: 100"),
    (lambda ids: {"input_ids": -ids}, "token id out of range"),
    (lambda ids: {"input_ids": np.zeros((2, 17), dtype=int)}, "sequence too long: 17 tokens"),
    (lambda ids: {"input_ids": ids.astype(np.float32)}, "input_ids must hold integers"),
    (lambda ids: {"input_ids": ids[0]}, "input_ids must have 2 dimension"),
    (lambda ids: {"input_ids": ids, "attention_mask": np.ones((3, 9), dtype=int)}, "attention_mask has shape"),
    (lambda ids: {"input_ids": ids, "attention_mask": np.full((3, 10), 2)}, "only 0 .padding. and 1"),
    (lambda ids: {"input_ids": ids, "token_type_ids": np.full((3, 10), 2)}, "token_type_ids must be in"),
    (lambda ids: {"input_ids": ids, "token_type_ids": np.zeros((3, 11), dtype=int)}, "token_type_ids has shape"),
    (lambda ids: {"input_ids": ids, "labels": np.full((3, 10), 100)}, "labels must be -100"),
    (lambda ids: {"input_ids": ids, "labels": np.full((3, 9), -100)}, "labels has shape"),
    (lambda ids: {"input_ids": ids, "next_sentence_label": np.array([0, 2, 1])}, "next_sentence_label must be"),
])
def test_bad_input_is_a_clear_value_error(small_model, make, match):
    ids = tiny_batch()[0]
    with pytest.raises(ValueError, match=match):
        small_model.forward(**make(ids))


def test_backward_without_forward_or_loss(small_model):
    fresh = BertForPreTraining(tiny_config(), seed=0)
    with pytest.raises(RuntimeError, match="forward"):
        fresh.backward()
    fresh.forward(tiny_batch()[0])
    with pytest.raises(RuntimeError, match="labels"):
        fresh.backward()


@pytest.mark.parametrize("kw, match", [
    ({"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ({"hidden_size": 30, "num_attention_heads": 4}, "multiple of num_attention_heads"),
    ({"vocab_size": 0}, "vocab_size must be a positive integer"),
])
def test_config_rejects_what_it_cannot_run(kw, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(**kw)


def test_backend_is_chosen_once_and_checked():
    """A model's backend is picked when it is built or moved; an unknown one is refused in one line,
    and with_backend shares the parameters (the same arrays) on another backend."""
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        BertForPreTraining(tiny_config(), backend="fast")
    with pytest.raises(ValueError, match="needs the model on the GPU"):
        BertForPreTraining(tiny_config(), backend="cupy")
    model = BertForPreTraining(tiny_config(), seed=0)
    assert model.backend.name == "numba"                                  # "auto" on the CPU
    reference = model.with_backend("numpy")
    assert reference.backend.name == "numpy" and model.backend.name == "numba"
    assert reference.params is model.params


@pytest.mark.parametrize("training", [False, True], ids=["dropout-off", "dropout-on"])
def test_backends_give_the_same_model(training):
    """The fused kernels compute what the reference computes: same loss and gradients (float64), same
    dropout masks (counter hash), for the whole model."""
    ids, tt, mask, labels, nsl = tiny_batch()
    results = []
    for backend in BACKENDS:
        model = BertForPreTraining(tiny_config(), seed=0, dtype=np.float64, backend=backend)
        out = model.forward(ids, tt, mask, labels, nsl, training=training)
        results.append((out.loss, model.backward()))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-12)
    for name in grads_a:
        np.testing.assert_allclose(grads_a[name], grads_b[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_config_json_round_trip_and_hf_keys(tmp_path):
    import json
    cfg = tiny_config()
    cfg.to_json_file(tmp_path / "config.json")
    again = BertConfig.from_json_file(tmp_path / "config.json")
    assert again.to_dict() == cfg.to_dict()
    d = json.loads((tmp_path / "config.json").read_text())
    d.update({"architectures": ["BertModel"], "transformers_version": "4.40.0", "gradient_checkpointing": False,
              "model_type": "bert", "torch_dtype": "float32", "use_cache": True, "classifier_dropout": None})
    (tmp_path / "hf.json").write_text(json.dumps(d))
    assert BertConfig.from_json_file(tmp_path / "hf.json").hidden_size == 32
    d["wat"] = 1
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="wat"):
        BertConfig.from_json_file(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        BertConfig.from_json_file(tmp_path / "broken.json")
    with pytest.raises(ConfigError, match="not found"):
        BertConfig.from_json_file(tmp_path / "missing.json")
