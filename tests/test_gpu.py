"""GPU tests (``pytest -m gpu``): the CUDA attention kernel against the float64 reference,
identical dropout masks, and a tiny whole model trained a few steps on the GPU vs the CPU.

Every test here is marked ``gpu``; tests/conftest.py skips them cleanly where CuPy cannot use
a CUDA device. Comparisons use the same ``assert_attention_close`` as tests/test_kernels.py,
and the planted-bug test shows it rejects a wrong CUDA kernel too.
"""
from __future__ import annotations

import numpy as np
import pytest

from bert_from_scratch.nn import attention as ref
from bert_from_scratch.kernels import kernel_args as na   # planted-bug constants (no Numba needed)

from attention_checks import TOLERANCE, assert_attention_close, random_inputs, reference_float64

pytestmark = pytest.mark.gpu

SHAPES = [(1, 1, 1, 32), (2, 3, 7, 32), (2, 2, 65, 64), (1, 3, 100, 32), (2, 1, 130, 64), (1, 2, 200, 64)]


@pytest.fixture(scope="module")
def cp():
    import cupy  # only imported when the GPU tests actually run

    return cupy


@pytest.fixture(scope="module")
def ca():
    from bert_from_scratch.kernels import cuda_attention

    return cuda_attention


def poison_memory_pool(cp, nbytes):
    """Fill the pool's free memory with NaN, so an output element a kernel forgets to write
    shows up as NaN instead of an earlier run's (correct) value left in a reused block."""
    cp.full(max(1, nbytes // 8), cp.nan, dtype=cp.float64)     # freed at once: back to the pool


def cuda_forward_backward(cp, ca, q, k, v, dout, mask, dropout_p, seed, planted_bug=na.BUG_NONE):
    poison_memory_pool(cp, 16 * q.nbytes)
    qg, kg, vg, dg = (cp.asarray(a) for a in (q, k, v, dout))
    mg = None if mask is None else cp.asarray(mask)
    out, cache = ca.attention_forward(qg, kg, vg, mg, dropout_p, seed, planted_bug=planted_bug)
    assert cache["backend"] == "cupy"
    grads = ca.attention_backward(dg, cache)
    return tuple(cp.asnumpy(a) for a in (out,) + grads)


def assert_cuda_matches_reference(cp, ca, q, k, v, dout, mask, dropout_p, seed, planted_bug=na.BUG_NONE):
    got = cuda_forward_backward(cp, ca, q, k, v, dout, mask, dropout_p, seed, planted_bug)
    want = reference_float64(q, k, v, dout, mask, dropout_p, seed)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert a.dtype == q.dtype
        assert_attention_close(a, b, TOLERANCE[q.dtype.type], f"cuda {name} {q.shape} {q.dtype} p={dropout_p}")


@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_float64_matches_reference(cp, ca, shape, dropout_p):
    rng = np.random.default_rng(hash((shape, dropout_p)) % 2**32)
    q, k, v, dout, mask = random_inputs(rng, *shape, np.float64, fully_padded_row=shape[0] > 1)
    assert_cuda_matches_reference(cp, ca, q, k, v, dout, mask, dropout_p, seed=77)


@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_float32_matches_float64_reference(cp, ca, shape, dropout_p):
    rng = np.random.default_rng(3 + hash((shape, dropout_p)) % 2**32)
    q, k, v, dout, mask = random_inputs(rng, *shape, np.float32)
    assert_cuda_matches_reference(cp, ca, q, k, v, dout, mask, dropout_p, seed=78)


@pytest.mark.parametrize("threads_per_row, rows_per_block", [(1, 32), (2, 16), (8, 32), (32, 1)])
@pytest.mark.parametrize("shape", [(2, 2, 65, 64), (1, 3, 100, 32), (2, 1, 37, 24)])
def test_cuda_other_launch_shapes_match_reference(cp, ca, monkeypatch, shape, threads_per_row, rows_per_block):
    """Lanes per row from 1 (no shuffles) to 32 (a whole warp per row), and a head size (24) that
    does not split evenly over the lanes."""
    monkeypatch.setattr(ca, "THREADS_PER_ROW", threads_per_row)
    monkeypatch.setattr(ca, "ROWS_PER_BLOCK", rows_per_block)
    rng = np.random.default_rng(11)
    q, k, v, dout, mask = random_inputs(rng, *shape, np.float64, fully_padded_row=shape[0] > 1)
    assert_cuda_matches_reference(cp, ca, q, k, v, dout, mask, 0.1, seed=79)


def test_cuda_without_mask_through_the_dispatcher(cp, ca):
    rng = np.random.default_rng(4)
    q, k, v, dout = (rng.standard_normal((2, 2, 90, 64)) for _ in range(4))
    qg, kg, vg, dg = (cp.asarray(a) for a in (q, k, v, dout))
    out, cache = ref.attention_forward(qg, kg, vg, None, 0.1, 5, backend="auto")
    assert cache["backend"] == "cupy"
    got = (out,) + ref.attention_backward(dg, cache)
    want = reference_float64(q, k, v, dout, None, 0.1, 5)
    for a, b in zip(got, want):
        assert_attention_close(cp.asnumpy(a), b, 1e-12, "cuda via dispatcher")


@pytest.mark.parametrize("dropout_p", [0.1, 0.5])
def test_cuda_dropout_mask_is_identical_to_numpy_and_numba(cp, ca, dropout_p):
    """q = k = 0 and v = I make the output the mask itself (see tests/test_kernels.py)."""
    B, H, T = 2, 3, 64
    q = np.zeros((B, H, T, T))
    v = np.broadcast_to(np.eye(T), (B, H, T, T)).copy()
    out, _ = ca.attention_forward(cp.asarray(q), cp.asarray(q), cp.asarray(v), None, dropout_p, 2024)
    cuda_mask = cp.asnumpy(out) * (1 - dropout_p) * T > 0.5
    numpy_mask = ref.dropout_keep_mask(2024, B, H, T, T, dropout_p)
    cupy_mask = cp.asnumpy(ref.dropout_keep_mask(2024, B, H, T, T, dropout_p, xp=cp))
    assert 0.5 * dropout_p < 1 - numpy_mask.mean() < 1.5 * dropout_p       # the mask is not trivial
    np.testing.assert_array_equal(cuda_mask, numpy_mask)
    np.testing.assert_array_equal(cupy_mask, numpy_mask)
    try:     # tests/test_kernels.py checks Numba against NumPy on the CPU; here only if Numba imports
        from bert_from_scratch.kernels import numba_attention
    except ImportError:
        return
    numba_out, _ = numba_attention.attention_forward(q, q, v, None, dropout_p, 2024)
    np.testing.assert_array_equal(numba_out * (1 - dropout_p) * T > 0.5, numpy_mask)


def test_hidden_dropout_mask_is_identical_on_cupy_and_numpy(cp):
    from bert_from_scratch.nn import layers
    x = np.random.default_rng(1).normal(size=(4, 33, 17))
    y_cpu, _ = layers.dropout_forward(x, 0.1, np.random.default_rng(9))
    y_gpu, _ = layers.dropout_forward(cp.asarray(x), 0.1, np.random.default_rng(9))
    np.testing.assert_array_equal(cp.asnumpy(y_gpu) == 0, y_cpu == 0)
    np.testing.assert_allclose(cp.asnumpy(y_gpu), y_cpu, rtol=1e-15)


def test_plain_cupy_reference_matches_numpy(cp):
    rng = np.random.default_rng(5)
    q, k, v, dout, mask = random_inputs(rng, 2, 2, 70, 32, np.float64)
    out, cache = ref.attention_forward_reference(*(cp.asarray(a) for a in (q, k, v)), cp.asarray(mask), 0.1, 6)
    got = (out,) + ref.attention_backward_reference(cp.asarray(dout), cache)
    for a, b in zip(got, reference_float64(q, k, v, dout, mask, 0.1, 6)):
        assert_attention_close(cp.asnumpy(a), b, 1e-12, "cupy matmul reference")


@pytest.mark.parametrize("bug, dropout_p", [(na.BUG_SKIP_CORRECTION, 0.0), (na.BUG_SKIP_DROPOUT_RESCALE, 0.1)])
def test_comparison_rejects_planted_cuda_bugs(cp, ca, bug, dropout_p):
    rng = np.random.default_rng(6)
    q, k, v, dout, mask = random_inputs(rng, 1, 2, 200, 64, np.float64)
    assert_cuda_matches_reference(cp, ca, q, k, v, dout, mask, dropout_p, 1)
    with pytest.raises(AssertionError, match="relative max error"):
        assert_cuda_matches_reference(cp, ca, q, k, v, dout, mask, dropout_p, 1, planted_bug=bug)


def test_tiny_model_trains_identically_on_gpu(cp):
    """Three SGD steps of a tiny BertForPreTraining (float64, attention and hidden dropout on: both
    draw their masks from the same counter hash on every backend) give the same losses on the GPU
    as on the CPU."""
    from bert_from_scratch import model as model_module
    from bert_from_scratch.config import BertConfig

    def make(backend):
        cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=32, hidden_dropout_prob=0.1,
                         attention_probs_dropout_prob=0.1)
        return model_module.BertForPreTraining(cfg, seed=0, dtype=np.float64, backend=backend)

    rng = np.random.default_rng(7)
    B, T = 3, 20
    ids = rng.integers(5, 100, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[1, 12:] = 0
    ids[mask == 0] = 0
    labels = np.full((B, T), -100)
    labels[:, 3] = ids[:, 3]
    labels[0, 7] = ids[0, 7]
    nsl = np.array([0, 1, 0])

    def train(model, to_device):
        losses = []
        for _ in range(3):
            out = model.forward(*(to_device(a) for a in (ids,)), token_type_ids=None,
                                attention_mask=to_device(mask), labels=to_device(labels),
                                next_sentence_label=to_device(nsl), training=True)
            grads = model.backward()
            for name, g in grads.items():
                model.params[name] -= 0.5 * g
            losses.append(out.loss)
        return losses

    cpu_losses = train(make("numpy"), lambda a: a)
    gpu_model = make("auto").to("cupy")
    gpu_losses = train(gpu_model, cp.asarray)
    assert len(set(np.round(cpu_losses, 6))) == 3, cpu_losses        # the model does learn
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-9, atol=0)


def test_pretraining_loop_on_gpu_matches_cpu_and_its_checkpoint_loads_on_the_cpu(cp, tmp_path):
    """The real loop (AdamW, warmup, gradient clipping, evaluation, checkpoints) on CuPy arrays:
    6 steps of a float64 tiny model give the CPU's losses; the checkpoint written from the GPU
    holds the GPU's weights and loads into a CPU model; resuming on the GPU continues bit for
    bit like an uninterrupted GPU run."""
    from bert_from_scratch.checkpoint import load_state_dict, load_safetensors
    from bert_from_scratch.model import BertForPreTraining
    from bert_from_scratch.constants import CHECKPOINT_DIR, WEIGHTS_NAME
    from bert_from_scratch.training.pretraining import pretrain
    from bert_from_scratch.nn.xp import to_numpy

    from test_train import EVAL, TRAIN, tiny_config

    def make(backend, device):
        cfg = tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
        model = BertForPreTraining(cfg, seed=0, dtype=np.float64, backend="numpy")
        return model.to("cupy", backend=backend) if device == "gpu" else model

    def train(model, out, **kwargs):
        return pretrain(model, TRAIN, EVAL, out, 6, batch_size=8, lr=1e-3, warmup=2, eval_every=3, save_every=3,
                        progress=False, plot=False, log=lambda msg: None, **kwargs)

    cpu_model, gpu_model = make("numpy", "cpu"), make("auto", "gpu")
    cpu = train(cpu_model, tmp_path / "cpu")
    gpu = train(gpu_model, tmp_path / "gpu")
    assert all(isinstance(p, cp.ndarray) for p in gpu_model.params.values())
    assert cpu.losses[0] != cpu.losses[-1]
    np.testing.assert_allclose(gpu.losses, cpu.losses, rtol=1e-9, atol=0)
    np.testing.assert_allclose([e["loss"] for e in gpu.evals], [e["loss"] for e in cpu.evals], rtol=1e-9)
    for name, p in cpu_model.params.items():
        np.testing.assert_allclose(to_numpy(gpu_model.params[name]), p, rtol=1e-7, atol=1e-12, err_msg=name)

    saved = load_safetensors(tmp_path / "gpu" / CHECKPOINT_DIR / WEIGHTS_NAME)
    host_model = make("numpy", "cpu")
    load_state_dict(host_model, saved)
    for name, p in gpu_model.params.items():
        np.testing.assert_array_equal(host_model.params[name], to_numpy(p), err_msg=name)

    split = make("auto", "gpu")
    train(split, tmp_path / "split", stop_at=3)
    resumed = train(make("auto", "gpu"), tmp_path / "split", resume=True)
    assert resumed.losses == gpu.losses
