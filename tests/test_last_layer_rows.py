"""The last layer computed at the heads' rows only (``BertForPreTraining.last_layer_at_heads_rows``).

With MLM labels the heads read the [CLS] rows and the labelled rows of the last hidden state, nothing else,
so the last layer's output dense, FFN and LayerNorms run on those rows alone (``model/blocks.py``,
``encoder_forward(rows=...)``). That must be the same function as the full computation: same loss, logits and
gradient of every parameter, dropout masks included (keyed by each row's global index, ``row_ids``), on every
backend and on a data-parallel rank's shard (``dropout_row_offset``). Its gradient against central
differences is in tests/test_model.py (``test_pretraining_model_every_parameter``, both settings).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bert_from_scratch.bench.train_step import model_flops
from bert_from_scratch.config import BertConfig
from bert_from_scratch.model import BertForPreTraining
from bert_from_scratch.nn.backend import get_backend

BACKENDS = ("numpy", "numba")


def config() -> BertConfig:
    return BertConfig(vocab_size=97, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=16)


def batch(B=5, T=12, seed=0):
    """Padding in two sequences, two segments, 3 labelled positions per sequence (never [CLS])."""
    r = np.random.default_rng(seed)
    ids = r.integers(1, 97, (B, T))
    mask = np.ones((B, T), dtype=np.int64)
    mask[1, 8:] = 0
    mask[3, 5:] = 0
    tt = np.zeros((B, T), dtype=np.int64)
    tt[:, 6:] = 1
    labels = np.full((B, T), -100)
    for b in range(B):
        labels[b, r.choice(np.arange(1, T), 3, replace=False)] = r.integers(0, 97, 3)
    return ids, tt, mask, labels, r.integers(0, 2, B)


def run(at_rows: bool, backend, dtype, row_offset=7, training=True):
    model = BertForPreTraining(config(), seed=3, dtype=dtype, backend=backend)
    model.last_layer_at_heads_rows = at_rows
    model.dropout_row_offset = row_offset          # a data-parallel rank's shard: its masks keyed by global rows
    out = model.forward(*batch(), training=training)
    assert model._cache["seq_shape"] == ((5 * 3 + 5, 16) if at_rows else (5, 12, 16))   # 15 labelled + 5 [CLS]
    return out, model.backward()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("training", [True, False], ids=["dropout-on", "dropout-off"])
def test_heads_rows_give_the_full_computations_loss_logits_and_gradients(backend, dtype, training):
    full, g_full = run(False, backend, dtype, training=training)
    rows, g_rows = run(True, backend, dtype, training=training)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert rows.loss == pytest.approx(full.loss, rel=rtol)
    assert rows.mlm_loss == pytest.approx(full.mlm_loss, rel=rtol) and rows.nsp_loss == pytest.approx(full.nsp_loss,
                                                                                                       rel=rtol)
    np.testing.assert_allclose(rows.prediction_logits, full.prediction_logits, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(rows.seq_relationship_logits, full.seq_relationship_logits, rtol=rtol, atol=rtol)
    for a, b in zip(rows.masked_positions, full.masked_positions):
        np.testing.assert_array_equal(a, b)
    assert set(g_rows) == set(g_full)
    for name in g_full:
        scale = max(float(np.abs(g_full[name]).max()), 1e-3)
        np.testing.assert_allclose(g_rows[name], g_full[name], rtol=0, atol=rtol * scale, err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_keyed_dropout_is_the_whole_batchs_mask_at_those_rows(backend):
    """bias + dropout + residual + LayerNorm on gathered rows with ``row_ids`` = the whole (B, T, C) batch's
    result at those rows, forward and backward (the shard at global sequence ``row_offset``)."""
    ops = get_backend(backend)
    r = np.random.default_rng(5)
    B, T, C, offset = 4, 6, 8, 3
    o, x, dy = (r.normal(size=(B, T, C)) for _ in range(3))
    bias, gamma, beta = r.normal(size=C), 1 + 0.1 * r.normal(size=C), r.normal(size=C)
    rows = np.array([0, 2, 5, 6, 13, 18, 23])
    whole, c_whole = ops.bias_dropout_add_layernorm_forward(o, bias, x, gamma, beta, 0.3, np.random.default_rng(1),
                                                            True, 1e-12, offset)
    part, c_part = ops.bias_dropout_add_layernorm_forward(o.reshape(-1, C)[rows], bias, x.reshape(-1, C)[rows],
                                                          gamma, beta, 0.3, np.random.default_rng(1), True, 1e-12,
                                                          offset, row_ids=rows + offset * T)
    np.testing.assert_allclose(part, whole.reshape(-1, C)[rows], rtol=1e-13)
    d_whole = np.zeros((B * T, C))
    d_whole[rows] = dy.reshape(-1, C)[rows]
    back_whole = ops.bias_dropout_add_layernorm_backward(d_whole.reshape(B, T, C), c_whole)
    back_part = ops.bias_dropout_add_layernorm_backward(dy.reshape(-1, C)[rows], c_part)
    for got, want in zip(back_part[:2], back_whole[:2]):                        # d_o, d_x at the rows
        np.testing.assert_allclose(got, want.reshape(-1, C)[rows], rtol=1e-12)
    for got, want in zip(back_part[2:], back_whole[2:]):                        # dbias, dgamma, dbeta
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    # and the mask is not the one a plain (N, C) array would get: the keys matter
    plain, _ = ops.bias_dropout_add_layernorm_forward(o.reshape(-1, C)[rows], bias, x.reshape(-1, C)[rows], gamma,
                                                      beta, 0.3, np.random.default_rng(1), True, 1e-12, offset)
    assert not np.allclose(plain, part)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_comparison_rejects_rows_keyed_by_their_place_in_the_subset(backend):
    """A planted bug: the gathered rows' dropout keyed by their index in the subset (``row_ids`` dropped), as a
    naive gather would do. The masks differ from the full computation's, and the comparison above catches it."""
    ops = get_backend(backend)
    real = ops.bias_dropout_add_layernorm_forward

    def keyed_by_place(*args, row_ids=None, **kwargs):
        return real(*args, **kwargs)
    buggy = dataclasses.replace(ops, name=f"{backend}-planted",
                                bias_dropout_add_layernorm_forward=keyed_by_place)
    full, _ = run(False, backend, np.float64)
    wrong, _ = run(True, buggy, np.float64)
    assert wrong.loss != pytest.approx(full.loss, rel=1e-6)
    right, _ = run(True, backend, np.float64)
    assert right.loss == pytest.approx(full.loss, rel=1e-12)


def test_heads_rows_need_the_cls_rows_and_no_hidden_states():
    model = BertForPreTraining(config(), seed=0, dtype=np.float64)
    ids, tt, mask, labels, nsl = batch()
    out = model.forward(ids, tt, mask, labels, nsl, output_hidden_states=True)   # falls back to every row
    assert out.hidden_states[-1].shape == (5, 12, 16)
    model.forward(ids, tt, mask, labels, nsl)
    with pytest.raises(ValueError, match="d_last_hidden_state needs the whole last hidden state"):
        model.backward_from(d_last_hidden_state=np.zeros((5, 12, 16)))
    from bert_from_scratch.model.blocks import encoder_forward
    from bert_from_scratch.model.params import Scope
    with pytest.raises(ValueError, match=r"every \[CLS\] row"):
        encoder_forward(ids, tt, mask, Scope(model.params, "bert."), model.backend, model.config,
                        np.random.default_rng(0), False, rows=np.array([0, 1, 12, 24, 36]))


def test_the_step_flops_count_the_last_layer_at_the_rows():
    """bench/train_step.py's FLOP count: the default job's step does ~25% less matmul work this way."""
    from bert_from_scratch.bench.default_step import job_config
    cfg = job_config()
    full, rows = model_flops(cfg, 128, 64, 1229), model_flops(cfg, 128, 64, 1229, 1229 + 128)
    H, I, T = cfg.hidden_size, cfg.intermediate_size, 64
    assert full - rows == pytest.approx(3 * (128 * 64 - 1357) * (2 * (2 * H * H + 2 * H * I) + 4 * T * H))
    assert 0.74 < rows / full < 0.76
    assert model_flops(cfg, 128, 64, 1229, 128 * 64) == full


def _task_model_runs(cls, kwargs, inputs, backend, dtype):
    """(loss, logits, grads) of ``cls`` with the last layer at the heads' rows and at every row, dropout on."""
    out = []
    for at_rows in (True, False):
        model = cls(config(), seed=3, dtype=dtype, backend=backend, **kwargs)
        model.last_layer_at_heads_rows = at_rows
        model.dropout_row_offset = 7
        res = model.forward(**inputs, training=True)
        assert len(model._cache["encoder"].seq_shape) == (2 if at_rows else 3)     # (M, H) rows, or (B, T, H)
        out.append((res.loss, res.logits, model.backward()))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("task", ["sequence-classification", "multiple-choice", "masked-lm"])
def test_task_models_heads_rows_match_every_row(task, backend):
    """The other models whose heads read some rows only: [CLS] (sequence classification, multiple choice) or the
    labelled rows (masked LM). Same loss, logits and gradients both ways, float64, dropout on, a shard's offset."""
    from bert_from_scratch.model import BertForMaskedLM, BertForMultipleChoice, BertForSequenceClassification
    ids, tt, mask, labels, nsl = batch()
    if task == "sequence-classification":
        runs = _task_model_runs(BertForSequenceClassification, {"num_labels": 3}, dict(
            input_ids=ids, token_type_ids=tt, attention_mask=mask, labels=np.array([0, 2, 1, 1, 0])), backend,
            np.float64)
    elif task == "multiple-choice":
        runs = _task_model_runs(BertForMultipleChoice, {}, dict(
            input_ids=ids[:4].reshape(2, 2, 12), attention_mask=mask[:4].reshape(2, 2, 12),
            labels=np.array([1, 0])), backend, np.float64)
    else:
        runs = _task_model_runs(BertForMaskedLM, {}, dict(input_ids=ids, token_type_ids=tt, attention_mask=mask,
                                                          labels=labels), backend, np.float64)
    (loss_rows, logits_rows, g_rows), (loss_all, logits_all, g_all) = runs
    assert loss_rows == pytest.approx(loss_all, rel=1e-12)
    np.testing.assert_allclose(logits_rows, logits_all, rtol=1e-12, atol=1e-12)
    for name in g_all:
        np.testing.assert_allclose(g_rows[name], g_all[name], rtol=1e-10, atol=1e-13, err_msg=name)


# ---------------------------------------------------------------------------------------------------------------
# The last layer's queries and attention core at the rows only (q_pos)
# ---------------------------------------------------------------------------------------------------------------
def _rows_of(x, q_pos):
    """x (B, nh, T, d) -> its rows q_pos (B, Tq): (B, nh, Tq, d)."""
    return np.take_along_axis(x, q_pos[:, None, :, None], axis=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_at_query_rows_is_the_full_attention_at_those_rows(backend):
    """The core with queries at some rows (``q_pos``), keys and values at all: the full core's output at those
    rows, and the same dK, dV and dQ at the rows when only they carry a gradient; dropout on (keyed by the
    position, not the slot), padding, a shard's offset, an unused slot. A planted bug (the rows' dropout keyed
    by their slot) is rejected by the same comparison."""
    ops = get_backend(backend)
    r = np.random.default_rng(2)
    B, nh, T, d = 3, 2, 10, 4
    q, k, v = (r.normal(size=(B, nh, T, d)) for _ in range(3))
    mask = np.ones((B, T), dtype=np.int64)
    mask[2, 7:] = 0
    q_pos = np.array([[0, 3, 7], [0, 9, 0], [0, 2, 5]])        # sequence 1: two rows and an unused slot
    used = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=bool)
    full, c_full = ops.attention_forward(q, k, v, mask, 0.3, 11, row_offset=5)
    part, c_part = ops.attention_forward(_rows_of(q, q_pos), k, v, mask, 0.3, 11, row_offset=5, q_pos=q_pos)
    assert part.shape == (B, nh, 3, d)
    np.testing.assert_allclose(part, _rows_of(full, q_pos), rtol=1e-12, atol=1e-14)
    dout_part = r.normal(size=(B, nh, 3, d)) * used[:, None, :, None]
    dout_full = np.zeros((B, nh, T, d))
    for b, s in zip(*np.nonzero(used)):
        dout_full[b, :, q_pos[b, s]] = dout_part[b, :, s]
    dq, dk, dv = ops.attention_backward(dout_full, c_full)
    dq_part, dk_part, dv_part = ops.attention_backward(dout_part, c_part)
    np.testing.assert_allclose(dk_part, dk, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(dv_part, dv, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(dq_part.transpose(0, 2, 1, 3)[used], _rows_of(dq, q_pos).transpose(0, 2, 1, 3)[used],
                               rtol=1e-11, atol=1e-13)
    by_slot = np.ascontiguousarray(np.broadcast_to(np.arange(3), (B, 3)))           # the planted bug
    wrong, _ = ops.attention_forward(_rows_of(q, q_pos), k, v, mask, 0.3, 11, row_offset=5, q_pos=by_slot)
    assert not np.allclose(wrong, _rows_of(full, q_pos), rtol=1e-6)
    # no query rows at all: nothing flows back to the keys and values (a kernel that writes dK and dV with its
    # first product must still write zeros when there is none)
    none, c_none = ops.attention_forward(q[:, :, :0], k, v, mask, 0.3, 11, q_pos=np.zeros((B, 0), dtype=np.int64))
    dq_none, dk_none, dv_none = ops.attention_backward(np.zeros_like(none), c_none)
    assert none.shape == dq_none.shape == (B, nh, 0, d)
    assert dk_none.shape == dv_none.shape == (B, nh, T, d) and not dk_none.any() and not dv_none.any()


def test_attention_at_query_rows_refuses_bad_positions_and_the_cuda_kernel_says_it_computes_every_row():
    from bert_from_scratch.kernels import cuda_attention, numba_attention
    q, k = np.zeros((2, 1, 3, 4)), np.zeros((2, 1, 6, 4))
    with pytest.raises(ValueError, match=r"q_pos must have shape \(B, Tq\) = \(2, 3\)"):
        numba_attention.attention_forward(q, k, k, q_pos=np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"q_pos must hold positions in \[0, 6\)"):
        numba_attention.attention_forward(q, k, k, q_pos=np.full((2, 3), 6))
    with pytest.raises(ValueError, match="q, k, v of one shape"):
        numba_attention.attention_forward(q, k, k)
    with pytest.raises(ValueError, match="computes every query row"):
        cuda_attention.attention_forward(q, k, k, q_pos=np.zeros((2, 3), dtype=np.int64))
    assert get_backend("numpy").attention_at_query_rows and get_backend("numba").attention_at_query_rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_last_layer_takes_its_queries_at_the_rows_and_a_backend_without_them_gathers_after_the_core(backend):
    """The model's last attention block runs its queries at the rows on the reference and Numba backends; a
    backend whose kernel computes every query row (CUDA: modelled here by the same functions under its name)
    takes the other road, gathering the rows after the core. Both give the full computation. A backend that
    drops the positions (dropout keyed by slot) is rejected by the comparison."""
    from bert_from_scratch.model.blocks import attention_block_forward
    from bert_from_scratch.model.params import Scope

    ops = get_backend(backend)
    model = BertForPreTraining(config(), seed=3, dtype=np.float64, backend=backend)
    x = np.random.default_rng(4).normal(size=(5, 12, 16))
    rows = np.array([0, 3, 4, 12, 20, 24, 36, 40, 48, 59])
    P = Scope(model.params, "bert.encoder.layer.1.attention.")

    def block(ops_):
        return attention_block_forward(x, None, P, ops_, model.config, np.random.default_rng(9), True, rows=rows)
    y, _, cache = block(ops)
    assert cache.query_rows is not None and cache.query_rows.Tq == 3           # at most 3 rows in a sequence
    every_row = dataclasses.replace(ops, name="cupy")                          # attention_at_query_rows: False
    y_gathered, _, cache_gathered = block(every_row)
    assert cache_gathered.query_rows is None
    np.testing.assert_allclose(y, y_gathered, rtol=1e-12)
    y_full, _, _ = attention_block_forward(x, None, P, ops, model.config, np.random.default_rng(9), True)
    np.testing.assert_allclose(y, y_full.reshape(-1, 16)[rows], rtol=1e-12)

    real = ops.attention_forward

    def keyed_by_slot(q, k, v, mask, p, seed, row_offset=0, q_pos=None):
        slots = None if q_pos is None else np.ascontiguousarray(np.broadcast_to(np.arange(q_pos.shape[1]),
                                                                                q_pos.shape))
        return real(q, k, v, mask, p, seed, row_offset=row_offset, q_pos=slots)
    planted = dataclasses.replace(ops, attention_forward=keyed_by_slot)
    full, _ = run(False, backend, np.float64)
    wrong, _ = run(True, planted, np.float64)
    assert wrong.loss != pytest.approx(full.loss, rel=1e-6)


def test_attention_gradients_for_plots_are_the_full_computations_at_query_rows():
    """``attention_grads`` (dL/dP per layer, for attribution plots) of a classifier whose last layer ran its
    queries at [CLS] only: the (B, nh, T, T) of every-row computation, zero at the rows nothing reads."""
    from bert_from_scratch.model import BertForSequenceClassification
    ids, tt, mask, _, _ = batch()
    grads = []
    for at_rows in (True, False):
        model = BertForSequenceClassification(config(), seed=3, dtype=np.float64, backend="numpy", num_labels=3)
        model.last_layer_at_heads_rows = at_rows
        model.forward(ids, tt, mask, labels=np.array([0, 2, 1, 1, 0]))
        model.backward()
        assert (model._cache["encoder"].layers[-1].attention.query_rows is not None) == at_rows
        grads.append(model.attention_grads())
    for got, want in zip(*grads):
        assert got.shape == want.shape == (5, 2, 12, 12)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-15)
    assert np.abs(grads[0][-1][:, :, 0]).max() > 0 and not grads[0][-1][:, :, 1:].any()


def test_a_gradient_on_attention_probabilities_needs_them_from_the_forward_on_either_path():
    """A loss on the attention maps (distillation) needs ``output_attentions`` in the forward: asked without it,
    both the every-row block and the query-rows block refuse in one line, before accumulating anything."""
    from bert_from_scratch.model.blocks import attention_block_backward, attention_block_forward
    from bert_from_scratch.model.params import Scope

    model = BertForPreTraining(config(), seed=3, dtype=np.float64, backend="numpy")
    P = Scope(model.params, "bert.encoder.layer.1.attention.")
    x = np.random.default_rng(4).normal(size=(5, 12, 16))
    for rows in (None, np.array([0, 3, 12, 24, 36, 48])):
        y, _, cache = attention_block_forward(x, None, P, model.backend, model.config, np.random.default_rng(9),
                                              True, rows=rows)
        assert (cache.query_rows is not None) == (rows is not None)
        grads = {}
        with pytest.raises(RuntimeError, match="needs a forward with output_attentions"):
            attention_block_backward(np.ones_like(y), cache, P, Scope(grads), model.backend,
                                     dprobs=np.zeros((5, 2, 12, 12)))
        assert grads == {}
