"""The fused Numba attention kernel equals the NumPy reference; the CUDA source compiles.

Every comparison goes through ``assert_attention_close``, and that helper is shown to reject
kernels with planted bugs (no online-softmax correction, no dropout rescale), just as the
finite-difference checker is shown to reject a wrong gradient.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import numba
import numpy as np
import pytest

from bert_from_scratch.nn import attention as ref
from bert_from_scratch.kernels import numba_attention as na
from bert_from_scratch.kernels import numba_math

from attention_checks import TOLERANCE, assert_attention_close, random_inputs, reference_float64

CUDA_SOURCE = Path(na.__file__).with_name("attention.cu")


def numba_forward_backward(q, k, v, dout, mask, dropout_p, seed, planted_bug=na.BUG_NONE):
    out, cache = na.attention_forward(q, k, v, mask, dropout_p, seed, planted_bug=planted_bug)
    return (out,) + na.attention_backward(dout, cache)


def assert_matches_reference(q, k, v, dout, mask, dropout_p, seed, planted_bug=na.BUG_NONE):
    tol = TOLERANCE[q.dtype.type]
    got = numba_forward_backward(q, k, v, dout, mask, dropout_p, seed, planted_bug)
    want = reference_float64(q, k, v, dout, mask, dropout_p, seed)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert a.dtype == q.dtype, f"{name} came back as {a.dtype}, expected {q.dtype}"
        assert_attention_close(a, b, tol, f"{name} {q.shape} {q.dtype} p={dropout_p}")


# (B, H, T, d): T below, at, just above and well above a tile (64); heads of 32 and 64
SHAPES = [(1, 1, 1, 32), (2, 3, 7, 32), (1, 2, 64, 64), (2, 2, 65, 64), (1, 3, 100, 32),
          (2, 1, 130, 64), (1, 2, 200, 64), (3, 2, 31, 16)]


# --------------------------------------------------------------------------------------
# forward and backward equal the reference
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dropout_p", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("shape", SHAPES)
def test_float64_matches_reference_including_fully_padded_rows(shape, dropout_p):
    rng = np.random.default_rng(hash((shape, dropout_p)) % 2**32)
    q, k, v, dout, mask = random_inputs(rng, *shape, np.float64, fully_padded_row=shape[0] > 1)
    assert_matches_reference(q, k, v, dout, mask, dropout_p, seed=int(rng.integers(2**32)))


@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_matches_float64_reference(shape, dropout_p):
    """float32 to 1e-5. (No all-padding sequence here: there every score is s - 10000, whose
    float32 spacing is 1e-3, so float32 itself -- reference included -- is only good to ~1e-3.)"""
    rng = np.random.default_rng(1 + hash((shape, dropout_p)) % 2**32)
    q, k, v, dout, mask = random_inputs(rng, *shape, np.float32)
    assert_matches_reference(q, k, v, dout, mask, dropout_p, seed=12345)


def test_no_mask_and_noncontiguous_inputs():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 70, 3, 32))            # (B, T, H, d), as a layer would have it
    q = x.transpose(0, 2, 1, 3)                        # a non-contiguous (B, H, T, d) view
    k, v, dout = (rng.standard_normal((2, 3, 70, 32)) for _ in range(3))
    assert_matches_reference(q, k, v, dout, None, 0.0, 0)


def test_dispatcher_routes_to_numba():
    rng = np.random.default_rng(6)
    q, k, v, dout, mask = random_inputs(rng, 2, 2, 40, 32, np.float64)
    out, cache = ref.attention_forward(q, k, v, mask, 0.1, 3, backend="numba")
    assert cache["backend"] == "numba"
    grads = ref.attention_backward(dout, cache)
    want = reference_float64(q, k, v, dout, mask, 0.1, 3)
    for a, b in zip((out,) + grads, want):
        assert_attention_close(a, b, 1e-12, "dispatcher")


# --------------------------------------------------------------------------------------
# dropout: the same counter hash, bit for bit
# --------------------------------------------------------------------------------------
def test_mix32_matches_reference_hash():
    x = np.random.default_rng(7).integers(0, 2**32, size=1000, dtype=np.uint64)
    with np.errstate(over="ignore"):
        want = ref.mix32(x.astype(np.uint32))
    got = np.array([na.mix32(int(v)) for v in x], dtype=np.uint64)
    np.testing.assert_array_equal(got, want.astype(np.uint64))


@pytest.mark.parametrize("dropout_p", [0.1, 0.5])
def test_dropout_keep_mask_is_identical(dropout_p):
    """With q = k = 0 every probability is 1/T, and with v = I the output *is* the mask:
    out[b, h, i, j] = Z[b, h, i, j] / ((1 - p) T). Read it back and compare bit for bit."""
    B, H, T = 2, 3, 64
    q = np.zeros((B, H, T, T))
    v = np.broadcast_to(np.eye(T), (B, H, T, T)).copy()
    out, _ = na.attention_forward(q, q, v, None, dropout_p, seed=2024)
    kernel_mask = out * (1 - dropout_p) * T > 0.5
    want = ref.dropout_keep_mask(2024, B, H, T, T, dropout_p)
    np.testing.assert_array_equal(kernel_mask, want)
    assert 0.0 < 1.0 - kernel_mask.mean() < 2 * dropout_p       # it does drop something
    other, _ = na.attention_forward(q, q, v, None, dropout_p, seed=2025)
    assert not np.array_equal(other, out)                       # and the seed matters


# --------------------------------------------------------------------------------------
# finite differences through the kernel
# --------------------------------------------------------------------------------------
def numerical_gradient_check(loss, inputs, analytic, rng, n_entries=6, eps=1e-6, tol=1e-6):
    """Central differences on a few random entries of each input; fail on a mismatch."""
    for name, x in inputs.items():
        for _ in range(n_entries):
            idx = tuple(int(rng.integers(n)) for n in x.shape)
            saved = x[idx]
            x[idx] = saved + eps
            up = loss()
            x[idx] = saved - eps
            down = loss()
            x[idx] = saved
            numeric = (up - down) / (2 * eps)
            exact = analytic[name][idx]
            assert abs(numeric - exact) <= tol * max(1.0, abs(numeric)), \
                f"d loss / d {name}{idx}: finite difference {numeric:.10f} vs kernel {exact:.10f}"


def _gradcheck_setup(seed):
    rng = np.random.default_rng(seed)
    q, k, v, _, mask = random_inputs(rng, 2, 2, 70, 32, np.float64)
    weights = rng.standard_normal(q.shape)                      # loss = sum(out * R)

    def loss():
        out, _ = na.attention_forward(q, k, v, mask, 0.1, 99)
        return float(np.sum(out * weights))

    _, cache = na.attention_forward(q, k, v, mask, 0.1, 99)
    dq, dk, dv = na.attention_backward(weights, cache)
    return rng, {"q": q, "k": k, "v": v}, {"q": dq, "k": dk, "v": dv}, loss


def test_finite_differences_through_the_kernel():
    rng, inputs, analytic, loss = _gradcheck_setup(8)
    numerical_gradient_check(loss, inputs, analytic, rng)


def test_finite_difference_check_rejects_a_wrong_gradient():
    rng, inputs, analytic, loss = _gradcheck_setup(8)
    wrong = dict(analytic, k=analytic["k"] * 1.001)             # 0.1% off
    with pytest.raises(AssertionError, match="d loss / d k"):
        numerical_gradient_check(loss, inputs, wrong, rng, n_entries=20)


# --------------------------------------------------------------------------------------
# the comparison rejects planted bugs
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_comparison_rejects_missing_online_softmax_correction(dtype):
    rng = np.random.default_rng(9)
    q, k, v, dout, mask = random_inputs(rng, 1, 2, 200, 64, dtype)   # 4 key tiles
    assert_matches_reference(q, k, v, dout, mask, 0.0, 0)            # the real kernel passes
    with pytest.raises(AssertionError, match="relative max error"):
        assert_matches_reference(q, k, v, dout, mask, 0.0, 0, planted_bug=na.BUG_SKIP_CORRECTION)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_comparison_rejects_missing_dropout_rescale(dtype):
    rng = np.random.default_rng(10)
    q, k, v, dout, mask = random_inputs(rng, 2, 2, 65, 32, dtype)
    assert_matches_reference(q, k, v, dout, mask, 0.1, 4)
    with pytest.raises(AssertionError, match="relative max error"):
        assert_matches_reference(q, k, v, dout, mask, 0.1, 4, planted_bug=na.BUG_SKIP_DROPOUT_RESCALE)


def test_comparison_rejects_a_different_dropout_seed():
    rng = np.random.default_rng(11)
    q, k, v, dout, mask = random_inputs(rng, 1, 2, 50, 32, np.float64)
    got = numba_forward_backward(q, k, v, dout, mask, 0.1, seed=1)
    want = reference_float64(q, k, v, dout, mask, 0.1, seed=2)
    with pytest.raises(AssertionError, match="relative max error"):
        assert_attention_close(got[0], want[0], 1e-12, "out")


# --------------------------------------------------------------------------------------
# building blocks of the fast kernel
# --------------------------------------------------------------------------------------
def _elementwise(scalar_exp):
    """A jitted loop applying a jitted scalar exp to each element of a 1-D array, as the kernels call it."""
    from numba import njit

    @njit(fastmath=numba_math.FASTMATH)
    def run(x):
        out = np.empty_like(x)
        for j in range(x.shape[0]):
            out[j] = scalar_exp(x[j])
        return out
    return run


def check_exp(run, dtype, lowest, tol):
    """Raise AssertionError unless ``run`` (array -> exp of it) is within ``tol`` relative error of np.exp
    (float64) on [lowest, 0], never subnormal or 0 there, and exactly 0 below ``lowest``."""
    below = [lowest - 0.01, lowest - 5.0, 1.1 * lowest - 10.0, -1e4, -1e4 - 0.5]
    x = np.concatenate([np.linspace(lowest, 0.0, 100_001), below]).astype(dtype)
    got = run(x)
    n = len(below)
    want = np.exp(x[:-n].astype(np.float64))
    rel = np.abs(got[:-n] - want) / want
    assert rel.max() < tol, f"exp relative error {rel.max():.2e} >= {tol:.0e}"
    assert np.all(got[:-n] >= np.finfo(dtype).tiny), "a subnormal (or zero) exp above the cut"
    assert np.all(got[-n:] == 0.0), f"exp below the cut is not 0: {got[-n:]}"


@pytest.mark.parametrize("dtype, lowest, tol", [(np.float32, -80.0, 5e-7), (np.float64, -700.0, 1e-13)])
def test_hand_written_exp_is_accurate_and_exactly_zero_below_its_range(dtype, lowest, tol):
    """The vectorised exp (range reduction + polynomial) against np.exp in float64: relative
    error a few ulp down to the cut; below it exactly 0 (a padded key's -10000, and the band just
    under the cut), never a subnormal number, which slows every later product on Intel CPUs."""
    check_exp(_elementwise(numba_math.fast_exp), dtype, lowest, tol)


def test_the_exp_check_rejects_wrong_exps():
    """Three plausible ways to get the hand-written exp wrong, each rejected by the check above: the old clamp
    to the smallest normal number (exp(-10000) = 1.2e-38, not 0), a Taylor polynomial two terms short (degree 5:
    ~2e-6 relative error at |r| = ln2/2), and 2^k built with the wrong exponent bias."""
    from numba import njit

    from_bits, cut = numba_math._float_from_bits, np.float32(-80.0)

    @njit(fastmath=numba_math.FASTMATH)
    def clamped(x):
        return max(np.exp(x), np.float32(1.1754944e-38))

    @njit(fastmath=numba_math.FASTMATH)
    def degree_5(x):
        y = max(x, cut)
        kf = np.floor(y * np.float32(1.4426950408889634) + np.float32(0.5))
        r = y - kf * np.float32(0.693145751953125) - kf * np.float32(1.428606765330187e-06)
        p = np.float32(1.0 / 120.0)
        for coefficient in (1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0):
            p = p * r + np.float32(coefficient)
        two_k = from_bits(np.int32((np.int32(kf) + 127) << 23))
        return p * two_k if x >= cut else np.float32(0.0)

    @njit(fastmath=numba_math.FASTMATH)
    def exponent_bias_128(x):
        y = max(x, cut)
        kf = np.floor(y * np.float32(1.4426950408889634) + np.float32(0.5))
        r = y - kf * np.float32(0.693145751953125) - kf * np.float32(1.428606765330187e-06)
        two_k = from_bits(np.int32((np.int32(kf) + 128) << 23))
        return numba_math.fast_exp(r) * two_k if x >= cut else np.float32(0.0)

    for wrong, message in ((clamped, "below the cut is not 0"), (degree_5, "relative error"),
                           (exponent_bias_128, "relative error")):
        with pytest.raises(AssertionError, match=message):
            check_exp(_elementwise(wrong), np.float32, -80.0, 5e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lane_maximum_is_the_maximum(dtype):
    """The vectorised row maximum of the fused cross-entropy equals np.max, wherever the maximum sits: the first
    element, inside the lanes, in the tail past the last full group of lanes, or alone in a short row."""
    from numba import njit

    max_lanes = njit(fastmath=na.FASTMATH)(lambda x: numba_math._max_lanes(x))
    rng = np.random.default_rng(8)
    for n in (1, 5, 15, 16, 17, 31, 32, 100, 8000, 8003):
        for where in {0, n // 2, n - 1}:
            x = rng.standard_normal(n).astype(dtype) - 10.0
            x[where] = 3.0
            assert max_lanes(x) == 3.0, (n, where)
        x = -np.abs(rng.standard_normal(n)).astype(dtype) - 1.0          # all negative
        assert max_lanes(x) == x.max()


def test_padded_keys_leave_no_subnormal_numbers():
    """A padded key's probability, exp(s - 10000 - max) / rowsum, is exactly 0, so neither the outputs nor
    the gradients hold subnormal float32 numbers (with the exp clamped to the smallest normal number
    instead, dV at padded keys was ~1e-40: subnormal, and the matmuls that read such gradients ran
    3-5x slower on an Intel Xeon; docs/performance.md, "Subnormal numbers")."""
    rng = np.random.default_rng(21)
    q, k, v, dout, mask = random_inputs(rng, 4, 2, 64, 64, np.float32, pad_fraction=0.3)
    tiny = np.finfo(np.float32).tiny
    for p in (0.0, 0.1):
        got = numba_forward_backward(q, k, v, dout, mask, p, seed=3)
        for name, a in zip(("out", "dq", "dk", "dv"), got):
            subnormal = int(np.count_nonzero((a != 0) & (np.abs(a) < tiny)))
            assert subnormal == 0, f"{name} (dropout {p}) holds {subnormal} subnormal numbers"
        dv = got[3]
        padded = np.broadcast_to((mask == 0)[:, None, :], dv.shape[:3])
        assert np.all(dv[padded] == 0.0)                 # no query attends a padded key


def test_kernel_calls_restore_numbas_parallel_chunksize():
    """The entry points hand out prange tasks one at a time and must put the caller's setting back."""
    import numba

    x = np.random.default_rng(13).standard_normal((1, 2, 70, 16))
    before = numba.get_parallel_chunksize()
    out, cache = na.attention_forward(x, x, x)
    na.attention_backward(out, cache)
    assert numba.get_parallel_chunksize() == before


# --------------------------------------------------------------------------------------
# memory grows with T, not T^2
# --------------------------------------------------------------------------------------
def test_extra_memory_is_linear_in_T():
    """Peak traced allocations of forward + backward (output, row statistics, gradients) stay
    far below one (B, H, T, T) float32 array -- the reference allocates several."""
    B, H, T, d = 1, 2, 2048, 64
    rng = np.random.default_rng(12)
    q, k, v, dout = (rng.standard_normal((B, H, T, d)).astype(np.float32) for _ in range(4))
    na.attention_backward(dout, na.attention_forward(q, k, v)[1])     # warm up (compiled already)
    tracemalloc.start()
    try:
        out, cache = na.attention_forward(q, k, v)
        grads = na.attention_backward(dout, cache)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_score_matrix = B * H * T * T * 4
    inputs_size = q.nbytes
    # each running backward task holds its head's (T, d) dO gathered from the merged rows and six 64 x 64 tiles
    per_task = T * d * 4 + 6 * na.BLOCK_Q * na.BLOCK_K * 4
    tasks = min(numba.get_num_threads(), B * H) * per_task
    assert peak <= 5 * inputs_size + 4 * B * H * T * 4 + tasks + 64 * 1024, peak   # out, dq, dk, dv, dout copy
    assert peak < one_score_matrix / 4
    del out, grads


# --------------------------------------------------------------------------------------
# bad input -> ValueError naming the problem
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    ((np.zeros((1, 2, 3, 4)), np.zeros((1, 2, 3, 5)), np.zeros((1, 2, 3, 4))), "one shape"),
    ((np.zeros((2, 3, 4)),) * 3, "one shape"),
    ((np.zeros((1, 2, 3, 4), np.int64),) * 3, "float32 or float64"),
    ((np.zeros((1, 2, 3, 4), np.float32), np.zeros((1, 2, 3, 4)), np.zeros((1, 2, 3, 4))), "one dtype"),
])
def test_bad_inputs_raise_value_error(args, message):
    with pytest.raises(ValueError, match=message):
        na.attention_forward(*args)


def test_bad_mask_dropout_and_dout_raise_value_error():
    x = np.zeros((1, 2, 3, 4))
    with pytest.raises(ValueError, match="mask must have shape"):
        na.attention_forward(x, x, x, np.ones((1, 4)))
    with pytest.raises(ValueError, match="dropout_p"):
        na.attention_forward(x, x, x, None, 1.0)
    _, cache = na.attention_forward(x, x, x)
    with pytest.raises(ValueError, match="dout must be"):
        na.attention_backward(np.zeros((1, 2, 3, 5)), cache)


# --------------------------------------------------------------------------------------
# the CUDA source compiles (nvcc in CI; NVRTC, what CuPy uses at run time, when present)
# --------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
@pytest.mark.parametrize("head_dim, threads_per_row, rows_per_block", [(64, 4, 32), (32, 1, 32), (30, 8, 16)])
def test_cuda_source_compiles_with_nvcc(tmp_path, head_dim, threads_per_row, rows_per_block):
    result = subprocess.run(["nvcc", "--ptx", "-arch=sm_80", f"-DHEAD_DIM={head_dim}",
                             f"-DTHREADS_PER_ROW={threads_per_row}", f"-DROWS_PER_BLOCK={rows_per_block}",
                             "-o", str(tmp_path / "a.ptx"), str(CUDA_SOURCE)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    ptx = (tmp_path / "a.ptx").read_text()
    for name in ("attention_forward_f32", "attention_forward_f64", "attention_backward_dq_f32",
                 "attention_backward_dq_f64", "attention_backward_dkdv_f32", "attention_backward_dkdv_f64"):
        assert f".entry {name}(" in ptx, f"kernel {name} missing from the PTX"


def _nvrtc():
    if importlib.util.find_spec("cupy_backends") is None:
        return None
    try:
        from cupy_backends.cuda.libs import nvrtc  # type: ignore
        nvrtc.getVersion()
        return nvrtc
    except Exception:
        return None


@pytest.mark.skipif(_nvrtc() is None, reason="CuPy's NVRTC is not installed (pip install cupy-cuda12x)")
@pytest.mark.parametrize("head_dim", [32, 64])
def test_cuda_source_compiles_with_nvrtc(head_dim):
    nvrtc = _nvrtc()
    program = nvrtc.createProgram(CUDA_SOURCE.read_text(), "attention.cu", [], [])
    try:
        nvrtc.compileProgram(program, ["-std=c++17", f"-DHEAD_DIM={head_dim}", "-arch=compute_80"])
    except Exception as exc:  # pragma: no cover - shown only when it fails
        raise AssertionError(nvrtc.getProgramLog(program)) from exc
    assert b"attention_backward_dkdv_f64" in nvrtc.getPTX(program)


def test_cuda_launch_shape_is_checked(monkeypatch):
    from bert_from_scratch.kernels import cuda_attention as ca
    assert ca.launch_shape() == (ca.ROWS_PER_BLOCK, ca.ROWS_PER_BLOCK * ca.THREADS_PER_ROW)
    monkeypatch.setattr(ca, "THREADS_PER_ROW", 3)
    with pytest.raises(ValueError, match="power of two"):
        ca.launch_shape()
    monkeypatch.setattr(ca, "THREADS_PER_ROW", 4)
    monkeypatch.setattr(ca, "ROWS_PER_BLOCK", 12)                  # 48 threads: not whole warps
    with pytest.raises(ValueError, match="multiple of 32"):
        ca.launch_shape()


# --------------------------------------------------------------------------------------
# inside the whole model
# --------------------------------------------------------------------------------------
def test_tiny_model_trains_identically_with_the_numba_kernel():
    """Three SGD steps of a tiny BertForPreTraining (float64, attention dropout on) give the same
    losses with backend="numba" as with the NumPy reference (the GPU twin of this test
    is in tests/test_gpu.py)."""
    from bert_from_scratch import model as model_module
    from bert_from_scratch.config import BertConfig

    def train(backend):
        cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=32, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.1)
        model = model_module.BertForPreTraining(cfg, seed=0, dtype=np.float64, backend=backend)
        rng = np.random.default_rng(7)
        ids = rng.integers(5, 100, (3, 20))
        mask = np.ones((3, 20), np.int64)
        mask[1, 12:] = 0
        ids[mask == 0] = 0
        labels = np.full((3, 20), -100)
        labels[:, 3] = ids[:, 3]
        losses = []
        for _ in range(3):
            out = model.forward(ids, attention_mask=mask, labels=labels, next_sentence_label=np.array([0, 1, 0]),
                                training=True)
            for name, g in model.backward().items():
                model.params[name] -= 0.5 * g
            losses.append(out.loss)
        return losses

    reference, fused = train("numpy"), train("numba")
    assert len(set(np.round(reference, 6))) == 3, reference            # it does learn
    np.testing.assert_allclose(fused, reference, rtol=1e-12, atol=0)
