r"""Fused attention on the GPU: ``attention.cu`` loaded with ``cupy.RawModule``.

Same algorithm and same dropout hash as ``numba_attention`` (see the comments at the top of
``attention.cu``): the forward keeps only the per-row maximum and ``1/sum`` of the softmax,
the backward recomputes the probabilities tile by tile in two kernels (dQ with a group of
lanes per query row, dK/dV with a group per key row), so no ``T x T`` array is ever stored.

The CUDA source is compiled by NVRTC the first time a head size is used
(``-DHEAD_DIM=<d>`` makes each lane's share of a row a fixed-size register array); CuPy
caches the binary on disk. ``THREADS_PER_ROW`` and ``ROWS_PER_BLOCK`` below set the launch
shape (they are compiled in too). The plain CuPy path (matmul + softmax) is the NumPy reference itself, which
runs unchanged on CuPy arrays: ``bert_from_scratch.attention.attention_forward_reference``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .kernel_args import MASK_VALUE, check_kernel_inputs
from .kernel_args import BUG_NONE, dropout_args as _dropout_args  # the same seed hash and threshold as Numba

CUDA_SOURCE = Path(__file__).with_name("attention.cu")

#: lanes of a warp that share one row (a power of two <= 32), and rows per thread block;
#: a block has ROWS_PER_BLOCK * THREADS_PER_ROW threads, a multiple of the warp size (32)
THREADS_PER_ROW = 4
ROWS_PER_BLOCK = 32

#: largest head size we compile for (per-thread register arrays of this length)
MAX_HEAD_DIM = 128

_modules: dict[int, object] = {}


def _cupy():
    try:
        import cupy  # type: ignore
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ValueError("the 'cupy' attention backend needs CuPy (pip install cupy-cuda12x) and a CUDA GPU") from exc
    return cupy


def launch_shape() -> tuple[int, int]:
    """(rows per block, threads per block) from THREADS_PER_ROW and ROWS_PER_BLOCK, checked."""
    g, rows = THREADS_PER_ROW, ROWS_PER_BLOCK
    if g not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"THREADS_PER_ROW must be a power of two up to 32; got {g}")
    if rows < 1 or (rows * g) % 32 or rows * g > 1024:
        raise ValueError(f"ROWS_PER_BLOCK * THREADS_PER_ROW must be a multiple of 32 up to 1024; got {rows} * {g}")
    return rows, rows * g


def load_module(head_dim: int):
    """The compiled ``attention.cu`` for one head size and launch shape (compiled once, then cached)."""
    rows, _ = launch_shape()
    key = (head_dim, THREADS_PER_ROW, rows)
    if key not in _modules:
        cp = _cupy()
        source = CUDA_SOURCE.read_text()
        _modules[key] = cp.RawModule(code=source, options=(
            "-std=c++17", f"-DHEAD_DIM={head_dim}", f"-DTHREADS_PER_ROW={THREADS_PER_ROW}",
            f"-DROWS_PER_BLOCK={rows}"))
    return _modules[key]


def _suffix(dtype) -> str:
    return "f32" if dtype == np.float32 else "f64"


def _check_inputs(q, k, v, mask, dropout_p):
    cp = _cupy()
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not isinstance(a, cp.ndarray):
            raise ValueError(f"cupy attention needs CuPy arrays; {name} is {type(a).__name__}")
    check_kernel_inputs(q, k, v, mask, dropout_p, "cupy")   # shapes, dtype, dropout: shared checks
    if not 1 <= q.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"cupy attention supports head sizes 1..{MAX_HEAD_DIM}; got {q.shape[-1]}")


def attention_forward(q, k, v, mask=None, dropout_p=0.0, seed=0, row_offset=0, q_pos=None, *,
                      planted_bug=BUG_NONE):
    """Fused attention forward on the GPU. q, k, v: CuPy (B, H, T, d); mask: (B, T) or None.
    ``row_offset``: global row of ``q[0]`` (keys the dropout mask, as the reference's).
    ``q_pos`` (query rows only) is not implemented here: the model computes every row on this backend
    (``Backend.attention_at_query_rows``).

    Returns ``(out, cache)``; ``planted_bug`` (tests only) as in ``numba_attention``.
    """
    if q_pos is not None:
        raise ValueError("the CUDA attention kernel computes every query row; q_pos is supported by the numpy "
                         "and numba backends")
    cp = _cupy()
    _check_inputs(q, k, v, mask, dropout_p)
    B, H, T, d = q.shape
    dtype = q.dtype
    q3, k3, v3 = (cp.ascontiguousarray(a).reshape(B * H, T, d) for a in (q, k, v))
    if mask is None:
        key_bias = cp.zeros((B, T), dtype)
    else:  # exactly the reference's (1 - mask) * -10000
        key_bias = cp.ascontiguousarray((1.0 - cp.asarray(mask).astype(dtype)) * dtype.type(MASK_VALUE))
    seed_h, threshold, keep_scale = _dropout_args(dropout_p, seed, planted_bug)
    out = cp.empty((B * H, T, d), dtype)
    row_max = cp.empty((B * H, T), dtype)
    row_inv_sum = cp.empty((B * H, T), dtype)
    scale = 1.0 / math.sqrt(d)
    kernel = load_module(d).get_function(f"attention_forward_{_suffix(dtype)}")
    rows, threads = launch_shape()
    grid = ((T + rows - 1) // rows, B * H)
    kernel(grid, (threads,),
           (q3, k3, v3, key_bias, out, row_max, row_inv_sum, np.int32(T), np.int32(H), np.float64(scale),
            np.uint32(seed_h), np.uint32(threshold), np.float64(keep_scale), np.int32(planted_bug),
            np.uint32((int(row_offset) * H) & 0xFFFFFFFF)))
    cache = {"backend": "cupy", "q": q3, "k": k3, "v": v3, "out": out, "key_bias": key_bias,
             "row_max": row_max, "row_inv_sum": row_inv_sum, "shape": (B, H, T, d),
             "dropout_p": dropout_p, "seed": seed, "scale": scale, "planted_bug": planted_bug,
             "row_offset": row_offset}
    return out.reshape(B, H, T, d), cache


def attention_backward(dout, cache):
    """Fused attention backward on the GPU: dout (B, H, T, d) -> (dq, dk, dv)."""
    cp = _cupy()
    B, H, T, d = cache["shape"]
    q3 = cache["q"]
    if not isinstance(dout, cp.ndarray) or dout.shape != (B, H, T, d):
        raise ValueError(f"dout must be a CuPy array of shape {(B, H, T, d)}; got {getattr(dout, 'shape', type(dout))}")
    dtype = q3.dtype
    dout3 = cp.ascontiguousarray(dout.astype(dtype, copy=False)).reshape(B * H, T, d)
    delta = cp.ascontiguousarray((dout3 * cache["out"]).sum(axis=-1))      # D_i = rowsum(dO * O): (B*H, T)
    seed_h, threshold, keep_scale = _dropout_args(cache["dropout_p"], cache["seed"], cache["planted_bug"])
    dq, dk, dv = (cp.empty((B * H, T, d), dtype) for _ in range(3))
    module = load_module(d)
    rows, threads = launch_shape()
    grid = ((T + rows - 1) // rows, B * H)
    common = (cache["key_bias"], cache["row_max"], cache["row_inv_sum"], delta)
    tail = (np.int32(T), np.int32(H), np.float64(cache["scale"]), np.uint32(seed_h), np.uint32(threshold),
            np.float64(keep_scale), np.uint32((int(cache.get("row_offset", 0)) * H) & 0xFFFFFFFF))
    module.get_function(f"attention_backward_dq_{_suffix(dtype)}")(
        grid, (threads,), (q3, cache["k"], cache["v"], dout3) + common + (dq,) + tail)
    module.get_function(f"attention_backward_dkdv_{_suffix(dtype)}")(
        grid, (threads,), (q3, cache["k"], cache["v"], dout3) + common + (dk, dv) + tail)
    return dq.reshape(B, H, T, d), dk.reshape(B, H, T, d), dv.reshape(B, H, T, d)
