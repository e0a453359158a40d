"""AdamW, clipping and the learning-rate schedule, checked against torch and by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bert_from_scratch.training.optim import (AdamW, adamw_update, clip_grad_norm, clip_scale, default_no_decay,
                                     global_grad_norm, linear_warmup_decay)
from conftest import requires_torch, requires_transformers

# A miniature BERT-like parameter set: decayed weights, exempt biases and LayerNorm weights.
SHAPES = {
    "bert.embeddings.word_embeddings.weight": (11, 6),
    "bert.embeddings.LayerNorm.weight": (6,),
    "bert.embeddings.LayerNorm.bias": (6,),
    "bert.encoder.layer.0.attention.self.query.weight": (6, 6),
    "bert.encoder.layer.0.attention.self.query.bias": (6,),
    "cls.predictions.bias": (11,),
}
BACKENDS = ["numpy", "numba"]   # the reference update and the fused kernel (nn/backend.py)


def random_params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def random_grads(rng, params, scale=1.0):
    return {k: (scale * rng.standard_normal(p.shape)).astype(p.dtype) for k, p in params.items()}


def run_ours_and_torch(backend, no_decay, torch_groups_by_rule, steps=6, dtype=np.float64):
    """Run our AdamW and torch's on the same gradients and learning rates; return max |difference|."""
    import torch

    params = random_params(0, dtype)
    torch_params = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    if torch_groups_by_rule:
        decay = [t for k, t in torch_params.items() if not default_no_decay(k)]
        exempt = [t for k, t in torch_params.items() if default_no_decay(k)]
        groups = [{"params": decay, "weight_decay": 0.01}, {"params": exempt, "weight_decay": 0.0}]
    else:
        groups = [{"params": list(torch_params.values()), "weight_decay": 0.01}]
    torch_opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.999), eps=1e-6)
    ours = AdamW(params, lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-6, no_decay=no_decay,
                 backend=backend)
    rng = np.random.default_rng(1)
    for step in range(steps):
        lr = linear_warmup_decay(step + 1, steps + 1, 2, 5e-2)       # a changing lr, as in training
        grads = random_grads(rng, params)
        for k, t in torch_params.items():
            t.grad = torch.tensor(grads[k])
        for group in torch_opt.param_groups:
            group["lr"] = lr
        torch_opt.step()
        ours.step(grads, lr=lr)
    return max(float(np.abs(params[k] - torch_params[k].detach().numpy()).max()) for k in params)


@requires_torch
@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_matches_torch_with_decay_groups(backend):
    assert run_ours_and_torch(backend, default_no_decay, torch_groups_by_rule=True) < 1e-12


@requires_torch
@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_matches_torch_decay_on_everything(backend):
    assert run_ours_and_torch(backend, None, torch_groups_by_rule=False) < 1e-12


@requires_torch
def test_torch_comparison_rejects_wrong_decay_groups():
    """The checker above fails when our groups differ from torch's (decay on LayerNorm/bias too)."""
    assert run_ours_and_torch("numpy", None, torch_groups_by_rule=True) > 1e-9


@requires_torch
def test_torch_comparison_rejects_update_without_bias_correction():
    """A planted bug (original-BERT style AdamW without bias correction) is caught by the checker."""
    import dataclasses

    from bert_from_scratch.nn.backend import get_backend

    def no_bias_correction(*args, **kwargs):
        kwargs.update(bias_correction1=1.0, bias_correction2=1.0)
        return adamw_update(*args, **kwargs)

    planted = dataclasses.replace(get_backend("numpy"), adamw_update=no_bias_correction)
    assert run_ours_and_torch(planted, default_no_decay, torch_groups_by_rule=True) > 1e-6


@requires_torch
@pytest.mark.parametrize("backend", BACKENDS)
def test_adamw_float32_close_to_torch(backend):
    assert run_ours_and_torch(backend, default_no_decay, True, dtype=np.float32) < 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_update_is_bit_identical_to_the_reference(dtype):
    """Same operations in the same order, no fast-math: the fused kernel (serial for small tensors,
    parallel for large ones) gives the reference's bits, so the backend never changes a training run."""
    shapes = {"big.weight": (300, 300), "small.bias": (7,), "LayerNorm.weight": (64,)}
    rng = np.random.default_rng(3)
    a = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    b = {k: v.copy() for k, v in a.items()}
    opt_a, opt_b = AdamW(a, lr=1e-2, backend="numpy"), AdamW(b, lr=1e-2, backend="numba")
    for _ in range(5):
        grads = random_grads(rng, a)
        opt_a.step(grads, lr=3e-3)
        opt_b.step(grads, lr=3e-3)
    for k in a:
        assert a[k].dtype == dtype and b[k].dtype == dtype
        np.testing.assert_array_equal(a[k], b[k])


def _steps_clipped(backend, dtype, fold, steps=4, max_norm=0.5):
    """Parameters after ``steps`` clipped AdamW steps: the clip applied to the gradients in place first
    (``fold=False``, as ``clip_grad_norm`` does) or handed to the update as its ``grad_scale`` (``fold=True``, as
    the training loop does; ``fold="ignored"``: a planted update that drops it)."""
    shapes = {"big.weight": (300, 300), "small.bias": (7,), "LayerNorm.weight": (64,)}
    rng = np.random.default_rng(11)
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    opt = AdamW(params, lr=1e-2, backend=backend)
    for _ in range(steps):
        grads = random_grads(rng, params, scale=3.0)           # norm ~ 900: every step is clipped
        if fold is False:
            clip_grad_norm(grads, max_norm)
            assert opt.step(grads, lr=3e-3) is True
        else:
            kept = {k: g.copy() for k, g in grads.items()}
            scale = clip_scale(global_grad_norm(grads), max_norm) if fold is True else 1.0
            assert scale < 1.0 or fold == "ignored"
            assert opt.step(grads, lr=3e-3, grad_scale=scale) is True
            assert all(np.array_equal(kept[k], grads[k]) for k in grads)     # the gradients are left as they were
    return params


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_clip_factor_given_to_the_update_is_the_clip_in_place(backend, dtype):
    """The loop's update multiplies each gradient by the clipping factor as it reads it: the same bits as scaling
    the gradients in place first, on both backends; an update that dropped the factor is told apart."""
    in_place, folded = _steps_clipped(backend, dtype, False), _steps_clipped(backend, dtype, True)
    for k in in_place:
        np.testing.assert_array_equal(in_place[k], folded[k])
    ignored = _steps_clipped(backend, dtype, "ignored")
    assert any(not np.array_equal(in_place[k], ignored[k]) for k in in_place)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_update_says_whether_the_weights_it_wrote_are_finite(backend):
    """``AdamW.step`` returns False when an update makes a weight non-finite, even one value of a large tensor (the
    parallel loop), and True otherwise; frozen tensors are not updated, so not looked at."""
    rng = np.random.default_rng(12)
    params = {"big.weight": rng.standard_normal((300, 300)).astype(np.float32),
              "small.bias": rng.standard_normal(7).astype(np.float32)}
    params["big.weight"][123, 45] = 3.4e38                       # float32's largest is 3.4028e38
    grads = {k: np.zeros_like(p) for k, p in params.items()}
    opt = AdamW(params, lr=1e-3, weight_decay=0.0, backend=backend)
    assert opt.step(grads) is True
    grads["big.weight"][123, 45] = -1.0        # at t = 2: m / (sqrt(v / bc2) + eps) = -0.14, times -lr / bc1: +7e36
    with np.errstate(over="ignore"):
        assert opt.step(grads, lr=1e37) is False
    big = params["big.weight"]
    assert np.isinf(big[123, 45]) and np.isfinite(np.delete(big, 123 * 300 + 45)).all()
    frozen = AdamW({"a": np.array([np.inf], np.float32), "b": np.ones(3, np.float32)}, frozen=["a"], backend=backend)
    assert frozen.step({"a": np.ones(1, np.float32), "b": np.ones(3, np.float32)}) is True


def test_numba_and_reference_backends_agree_in_float32():
    a, b = random_params(3, np.float32), random_params(3, np.float32)
    opt_a, opt_b = AdamW(a, lr=1e-2, backend="numpy"), AdamW(b, lr=1e-2, backend="numba")
    rng = np.random.default_rng(4)
    for _ in range(5):
        grads = random_grads(rng, a)
        opt_a.step(grads)
        opt_b.step(grads)
    for k in a:
        assert a[k].dtype == np.float32 and b[k].dtype == np.float32
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_gradient_step_is_pure_decay_on_decayed_names_only(backend):
    """With g = 0: m = v = 0, the Adam term is 0/(0+eps) = 0, and only theta (1 - lr wd) remains."""
    params = random_params(5)
    before = {k: v.copy() for k, v in params.items()}
    opt = AdamW(params, lr=0.5, weight_decay=0.1, backend=backend)
    opt.step({k: np.zeros_like(v) for k, v in params.items()})
    for k in params:
        expected = before[k] if default_no_decay(k) else before[k] * (1 - 0.5 * 0.1)
        np.testing.assert_allclose(params[k], expected, rtol=1e-15, atol=0)
    assert default_no_decay("bert.embeddings.LayerNorm.weight") and default_no_decay("cls.predictions.bias")
    assert not default_no_decay("bert.encoder.layer.0.attention.self.query.weight")


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_step_moves_each_value_by_lr_times_sign(backend):
    """At t=1 with bias correction, m_hat/sqrt(v_hat) = g/|g|: every value moves by lr (minus eps effects)."""
    params = random_params(6)
    before = {k: v.copy() for k, v in params.items()}
    grads = random_grads(np.random.default_rng(7), params)
    AdamW(params, lr=1e-3, weight_decay=0.0, eps=1e-12, backend=backend).step(grads)
    for k in params:
        np.testing.assert_allclose(params[k] - before[k], -1e-3 * np.sign(grads[k]), rtol=1e-8)


def test_step_updates_the_callers_arrays_in_place():
    params = random_params(8)
    arrays = dict(params)                       # the model holds the same array objects
    snapshot = {k: v.copy() for k, v in params.items()}
    AdamW(params, lr=1e-2).step(random_grads(np.random.default_rng(9), params))
    for k in params:
        assert params[k] is arrays[k]
        assert not np.array_equal(arrays[k], snapshot[k])


def test_state_dict_roundtrip_through_safetensors_resumes_bit_for_bit(tmp_path):
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(10)
    grads = [random_grads(rng, random_params(0, np.float32)) for _ in range(6)]
    straight = random_params(0, np.float32)
    opt = AdamW(straight, lr=1e-2)
    for g in grads:
        opt.step(g)

    interrupted = random_params(0, np.float32)
    opt1 = AdamW(interrupted, lr=1e-2)
    for g in grads[:3]:
        opt1.step(g)
    checkpoint_params = {k: v.copy() for k, v in interrupted.items()}     # what a checkpoint would hold
    saved_params = {k: v.copy() for k, v in checkpoint_params.items()}
    state = opt1.state_dict()
    assert set(state) == {"step"} | {f"{kind}.{k}" for k in SHAPES for kind in ("exp_avg", "exp_avg_sq")}
    save_file(state, str(tmp_path / "optimizer.safetensors"))
    m_before = state["exp_avg.cls.predictions.bias"].copy()
    opt1.step(grads[3])                        # the returned dict holds copies: later steps leave it alone
    assert np.array_equal(state["exp_avg.cls.predictions.bias"], m_before) and int(state["step"][0]) == 3

    opt2 = AdamW(saved_params, lr=1e-2)
    opt2.load_state_dict(load_file(str(tmp_path / "optimizer.safetensors")))
    assert opt2.step_count == 3
    for g in grads[3:]:
        opt2.step(g)
    for k in straight:
        assert np.array_equal(saved_params[k], straight[k]), k

    # The same comparison rejects a resume that forgets the optimizer state (moments and step restart).
    forgetful_params = {k: v.copy() for k, v in checkpoint_params.items()}
    forgetful = AdamW(forgetful_params, lr=1e-2)
    for g in grads[3:]:
        forgetful.step(g)
    assert not all(np.array_equal(forgetful_params[k], straight[k]) for k in straight)


def test_load_state_dict_rejects_mismatched_state():
    params = random_params(0)
    state = AdamW(params).state_dict()
    missing = dict(state)
    del missing["exp_avg.cls.predictions.bias"]
    with pytest.raises(ValueError, match="missing.*exp_avg.cls.predictions.bias"):
        AdamW(params).load_state_dict(missing)
    wrong_shape = dict(state)
    wrong_shape["exp_avg_sq.cls.predictions.bias"] = np.zeros(12)
    with pytest.raises(ValueError, match="exp_avg_sq.cls.predictions.bias has shape"):
        AdamW(params).load_state_dict(wrong_shape)


def test_step_rejects_bad_gradients_and_bad_hyperparameters():
    params = random_params(0)
    opt = AdamW(params)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    del grads["cls.predictions.bias"]
    with pytest.raises(ValueError, match="missing.*cls.predictions.bias"):
        opt.step(grads)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    grads["cls.predictions.bias"] = np.zeros(3)
    with pytest.raises(ValueError, match="'cls.predictions.bias' has shape"):
        opt.step(grads)
    assert opt.step_count == 0                  # a rejected step changes nothing
    with pytest.raises(ValueError, match="betas"):
        AdamW(params, betas=(1.0, 0.999))
    with pytest.raises(ValueError, match="floating-point"):
        AdamW({"w": np.zeros(3, dtype=np.int64)})


# ------------------------------------------------------------------------------ schedule
def test_schedule_values_at_chosen_steps():
    peak, total, warmup = 1e-3, 110, 10
    assert linear_warmup_decay(0, total, warmup, peak) == 0.0
    assert linear_warmup_decay(5, total, warmup, peak) == pytest.approx(peak / 2, rel=1e-15)
    assert linear_warmup_decay(10, total, warmup, peak) == pytest.approx(peak, rel=1e-15)
    assert linear_warmup_decay(60, total, warmup, peak) == pytest.approx(peak / 2, rel=1e-15)
    assert linear_warmup_decay(109, total, warmup, peak) == pytest.approx(peak / 100, rel=1e-12)
    assert linear_warmup_decay(110, total, warmup, peak) == 0.0
    assert linear_warmup_decay(500, total, warmup, peak) == 0.0
    assert linear_warmup_decay(0, 10, 0, peak) == peak          # no warmup: start at the peak
    with pytest.raises(ValueError, match="warmup_steps"):
        linear_warmup_decay(0, 10, 11, peak)
    with pytest.raises(ValueError, match="total_steps"):
        linear_warmup_decay(0, 0, 0, peak)


@requires_transformers
def test_schedule_matches_hugging_face_linear_schedule():
    import torch
    from transformers import get_linear_schedule_with_warmup

    peak, total, warmup = 2e-4, 37, 7
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    sched = get_linear_schedule_with_warmup(opt, warmup, total)
    theirs = []
    for _ in range(total + 3):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [linear_warmup_decay(s, total, warmup, peak) for s in range(total + 3)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-20)
    shifted = [linear_warmup_decay(s + 1, total, warmup, peak) for s in range(total + 3)]   # off by one
    assert not np.allclose(shifted, theirs, rtol=1e-12, atol=1e-20)


# ------------------------------------------------------------------------------ clipping
@requires_torch
@pytest.mark.parametrize("scale", [10.0, 1e-3], ids=["clipped", "untouched"])
def test_clip_matches_torch(scale):
    import torch

    grads = random_grads(np.random.default_rng(11), random_params(0), scale=scale)
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g.copy())
    torch_norm = float(torch.nn.utils.clip_grad_norm_(tensors, 1.0))
    before = {k: g.copy() for k, g in grads.items()}
    norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(torch_norm, rel=1e-13)
    assert (norm > 1.0) == (scale == 10.0)
    for t, k in zip(tensors, grads):
        np.testing.assert_allclose(grads[k], t.grad.numpy(), rtol=1e-13, atol=0)
    assert global_grad_norm(grads) == pytest.approx(min(norm, 1.0), rel=1e-5)
    if scale == 1e-3:
        for k in grads:
            assert np.array_equal(grads[k], before[k])


def test_clip_norm_value_and_nonfinite_gradients():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    assert clip_grad_norm(grads, 10.0) == 5.0
    assert clip_grad_norm(grads, 1.0) == 5.0
    np.testing.assert_allclose(np.concatenate([grads["a"], grads["b"].ravel()]), [0.6, 0.0, 0.8], rtol=1e-6)
    bad = {"a": np.array([1.0, np.inf])}
    assert math.isinf(clip_grad_norm(bad, 1.0))
    assert bad["a"][0] == 1.0                   # left untouched: the trainer stops on a non-finite norm
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(grads, 0.0)


@pytest.mark.gpu
def test_adamw_on_cupy_matches_numpy():
    import cupy as cp

    host = random_params(12)
    device = {k: cp.asarray(v) for k, v in host.items()}
    opt_host, opt_dev = AdamW(host, lr=1e-2, backend="numpy"), AdamW(device, lr=1e-2)
    rng = np.random.default_rng(13)
    for _ in range(4):
        grads = random_grads(rng, host, scale=10.0)
        grads_dev = {k: cp.asarray(v) for k, v in grads.items()}
        assert clip_grad_norm(grads_dev, 1.0) == pytest.approx(clip_grad_norm(grads, 1.0), rel=1e-12)
        opt_host.step(grads)
        opt_dev.step(grads_dev)
    for k in host:
        np.testing.assert_allclose(cp.asnumpy(device[k]), host[k], rtol=1e-12, atol=1e-15)


def test_clip_refuses_a_non_positive_max_norm_in_one_line_leaving_the_gradients():
    grads = {"a": np.ones(3)}
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="max_norm must be positive"):
            clip_grad_norm(grads, bad)
        with pytest.raises(ValueError, match="max_norm must be positive"):
            clip_scale(1.0, bad)
    assert np.array_equal(grads["a"], np.ones(3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero1_says_whether_the_gathered_weights_are_finite(backend):
    """ZeRO-1's step answers for every tensor after the gather (the same on every rank); one in a process here."""
    from bert_from_scratch.distributed.world import World
    from bert_from_scratch.distributed.zero import ShardedAdamW

    params = {"w": np.full((300, 300), 1.0, np.float32), "b": np.zeros(7, np.float32)}
    params["w"][5, 6] = 3.4e38
    opt = ShardedAdamW(params, World(), lr=1e-3, weight_decay=0.0, backend=backend)
    grads = {k: np.zeros_like(p) for k, p in params.items()}
    assert opt.step(grads) is True
    grads["w"][5, 6] = -1.0
    with np.errstate(over="ignore"):
        assert opt.step(grads, lr=1e37) is False
    assert np.isinf(params["w"][5, 6])
