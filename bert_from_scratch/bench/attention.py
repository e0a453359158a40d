"""Benchmark the attention core: NumPy reference vs fused Numba kernel vs torch SDPA vs CUDA.

    python -m bert_from_scratch.bench.attention --backends numpy,numba,torch --out bench.json

For every shape (B, H, T, d) and backend, float32, no mask, no dropout, it times the forward
and the forward + backward and prints one row each:

- ``median ms`` over ``repeats`` runs after one warm-up run (which also compiles Numba/CUDA);
  CPU backends with ``time.perf_counter``, CuPy with CUDA events.
- ``GFLOP/s`` counts the matmuls of attention: forward ``4 B H T^2 d``, forward + backward
  ``12 B H T^2 d`` (backward = 2x forward, the usual FlashAttention convention; the fused
  backward really does 5 products, recomputing ``Q K^T``, so its hardware rate is higher).
- ``peak extra MB``: memory allocated on top of the inputs during one (untimed) run.
  numpy and numba: ``tracemalloc`` peak (NumPy reports its array buffers to tracemalloc;
  Numba's per-task scratch tiles, a few tens of KiB, are not traced). torch: the rise of the
  process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``), since
  torch's allocator is invisible to tracemalloc. cupy: bytes the (emptied) CuPy memory pool
  holds after the run, i.e. its peak.
- ``x numpy`` / ``x torch``: how many times faster than numpy / torch on the same row
  (> 1 is faster), measured in the same run.

Backends: ``numpy`` (the reference in ``bert_from_scratch.nn.attention``), ``numba``,
``torch`` (``torch.nn.functional.scaled_dot_product_attention``, when torch is installed),
``cupy`` (the fused CUDA kernel) and ``cupy_matmul`` (the NumPy reference run on CuPy
arrays), when a GPU is present, and ``torch_cuda`` (SDPA on the GPU, the production kernel to compare the CUDA kernel with;
for float32 torch picks its memory-efficient attention kernel, as FlashAttention-2 needs half
precision). Missing ones are skipped
with a note. GPU backends are timed with CUDA events; ``x torch`` always compares with the
CPU ``torch`` row.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
import tracemalloc
from typing import Callable

import numpy as np

from ..nn.attention import attention_backward_reference, attention_forward_reference
from ..nn.xp import gpu_available

DEFAULT_BACKENDS = ("numpy", "numba", "torch", "cupy")
ALL_BACKENDS = ("numpy", "numba", "torch", "cupy", "cupy_matmul", "torch_cuda")
DEFAULT_SHAPES = ((8, 12, 128, 64), (2, 12, 512, 64), (1, 12, 2048, 64))
PASSES = ("forward", "forward+backward")

#: pause before each backend: OpenBLAS's and OpenMP's worker threads busy-wait for a while after
#: their last task, and on a 2-core machine a spinning pool of the previous backend halves the
#: next one's speed (measured: Numba's fwd+bwd at T=128 took 16-18 ms right after NumPy's runs,
#: 9.5 ms alone)
QUIET_S = 0.5


def attention_flops(shape, which: str) -> float:
    B, H, T, d = shape
    forward = 4.0 * B * H * T * T * d
    return forward if which == "forward" else 3.0 * forward


# --------------------------------------------------------------------------------------
# one "run" function per backend and pass: inputs are made once, outside the timing
# --------------------------------------------------------------------------------------
def _numpy_like_runs(forward, backward, q, k, v, dout):
    def fwd():
        return forward(q, k, v, None, 0.0, 0)[0]

    def fwd_bwd():
        out, cache = forward(q, k, v, None, 0.0, 0)
        return backward(dout, cache)
    return {"forward": fwd, "forward+backward": fwd_bwd}


def _make_runs(backend, arrays):
    q, k, v, dout = arrays
    if backend == "numpy":
        return _numpy_like_runs(attention_forward_reference, attention_backward_reference, q, k, v, dout)
    if backend == "numba":
        from ..kernels import numba_attention as na
        return _numpy_like_runs(na.attention_forward, na.attention_backward, q, k, v, dout)
    if backend in ("cupy", "cupy_matmul"):
        import cupy as cp  # type: ignore
        qg, kg, vg, dg = (cp.asarray(a) for a in arrays)
        if backend == "cupy":
            from ..kernels import cuda_attention as ca
            return _numpy_like_runs(ca.attention_forward, ca.attention_backward, qg, kg, vg, dg)
        return _numpy_like_runs(attention_forward_reference, attention_backward_reference, qg, kg, vg, dg)
    if backend in ("torch", "torch_cuda"):
        import torch  # type: ignore
        sdpa = torch.nn.functional.scaled_dot_product_attention
        qt, kt, vt, dt = (torch.from_numpy(a) for a in arrays)
        if backend == "torch_cuda":
            qt, kt, vt, dt = (t.cuda() for t in (qt, kt, vt, dt))

        def fwd():
            with torch.no_grad():
                return sdpa(qt, kt, vt)

        def fwd_bwd():
            qr, kr, vr = (x.detach().requires_grad_(True) for x in (qt, kt, vt))
            sdpa(qr, kr, vr).backward(dt)
            return qr.grad, kr.grad, vr.grad
        return {"forward": fwd, "forward+backward": fwd_bwd}
    raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(ALL_BACKENDS)}")


def _available(backend) -> str | None:
    """None when the backend can run here, else why not."""
    if backend in ("torch", "torch_cuda"):
        try:
            import torch  # noqa: F401
        except ImportError:
            return "torch is not installed"
        if backend == "torch_cuda" and not torch.cuda.is_available():
            return "torch sees no CUDA GPU"
    if backend in ("cupy", "cupy_matmul") and not gpu_available():
        return "no usable CUDA GPU"
    if backend == "numba":
        try:
            import numba  # noqa: F401
        except ImportError:
            return "numba is not installed"
    return None


# --------------------------------------------------------------------------------------
# timing and memory
# --------------------------------------------------------------------------------------
def _time_cpu(run: Callable, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _time_cuda(run: Callable, repeats: int) -> list[float]:
    import cupy as cp  # type: ignore
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return times


def _time_torch_cuda(run: Callable, repeats: int) -> list[float]:
    import torch  # type: ignore
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return times


def _peak_rss_rise_mb(run: Callable) -> float | None:
    """Rise of VmHWM (peak resident memory) during ``run``; None where /proc is missing."""
    def read(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        raise OSError(field)
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)            # hand freed (cached) memory back first
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                   # reset VmHWM to the current RSS
        before = read("VmRSS:")
        run()
        return max(0, read("VmHWM:") - before) / 2**20
    except OSError:
        return None


def _peak_extra_mb(backend, run: Callable) -> tuple[float | None, str]:
    if backend in ("numpy", "numba"):
        tracemalloc.start()
        try:
            run()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return peak / 2**20, "tracemalloc"
    if backend == "torch":
        return _peak_rss_rise_mb(run), "peak RSS rise"
    if backend == "torch_cuda":
        import torch  # type: ignore
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - baseline) / 2**20, "torch.cuda peak"
    import cupy as cp  # type: ignore
    pool = cp.get_default_memory_pool()
    cp.cuda.Device().synchronize()
    baseline = pool.used_bytes()
    pool.free_all_blocks()
    run()
    cp.cuda.Device().synchronize()
    return max(0, pool.total_bytes() - baseline) / 2**20, "cupy pool"


# --------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------
def run(backends=DEFAULT_BACKENDS, shapes=DEFAULT_SHAPES, repeats=5, out_json=None, seed=0,
        print_table=True) -> list[dict]:
    """Time every backend on every shape, forward and forward+backward (float32).

    Returns one dict per (shape, pass, backend) with keys ``backend, shape, pass, median_ms,
    times_ms, gflops, peak_extra_mb, memory_method, vs_numpy, vs_torch`` (ratios are
    other_ms / this_ms, None when that backend was not run). Writes them to ``out_json`` too.
    """
    backends = list(backends)
    if "cupy" in backends and "cupy_matmul" not in backends:
        backends.append("cupy_matmul")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    skipped = {}
    for b in backends:
        why = _available(b)
        if why:
            skipped[b] = why
    rng = np.random.default_rng(seed)
    with contextlib.ExitStack() as stack:
        rows = _measure_all(backends, skipped, shapes, rng, repeats, stack)
    if print_table:
        print(format_table(rows, skipped))
    if out_json:
        with open(out_json, "w") as f:
            json.dump({"rows": rows, "skipped": skipped}, f, indent=1)
    return rows


def _measure(backend, arrays, which, repeats) -> dict:
    """One row: ``backend``'s ``which`` pass on ``arrays`` (q, k, v, dout), warmed up, timed ``repeats`` times,
    then its peak extra memory."""
    shape = arrays[0].shape
    fn = _make_runs(backend, arrays)[which]
    timer = (_time_cuda if backend.startswith("cupy") else
             _time_torch_cuda if backend == "torch_cuda" else _time_cpu)
    time.sleep(QUIET_S)                                        # let the last backend's threads idle
    timer(fn, 1)                                               # warm-up / compile
    times = timer(fn, repeats)
    peak, method = _peak_extra_mb(backend, fn)
    median = statistics.median(times)
    return {"backend": backend, "shape": list(shape), "pass": which, "dtype": "float32", "median_ms": median,
            "times_ms": times, "gflops": attention_flops(shape, which) / (median * 1e6), "peak_extra_mb": peak,
            "memory_method": method, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}   # as its process read it


def _measure_all(backends, skipped, shapes, rng, repeats, stack) -> list[dict]:
    rows: list[dict] = []
    torch_pool = None
    for shape in shapes:
        shape = tuple(int(x) for x in shape)
        if len(shape) != 4:
            raise ValueError(f"shapes are (B, H, T, d); got {shape}")
        arrays = tuple(rng.standard_normal(shape).astype(np.float32) for _ in range(4))
        for which in PASSES:
            group = []
            for backend in backends:
                if backend in skipped:
                    continue
                if backend == "torch":                         # one process of torch's own for the run
                    if torch_pool is None:
                        from .torch_step import torch_process
                        torch_pool = stack.enter_context(torch_process())
                    group.append(torch_pool.submit(_measure, backend, arrays, which, repeats).result())
                else:
                    group.append(_measure(backend, arrays, which, repeats))
            by_name = {r["backend"]: r["median_ms"] for r in group}
            for r in group:
                r["vs_numpy"] = by_name["numpy"] / r["median_ms"] if "numpy" in by_name else None
                r["vs_torch"] = by_name["torch"] / r["median_ms"] if "torch" in by_name else None
            rows.extend(group)
    return rows


def format_table(rows, skipped=None) -> str:
    def num(x, fmt):
        return "-" if x is None else format(x, fmt)
    header = (f"{'shape (B,H,T,d)':<18} {'pass':<17} {'backend':<12} {'median ms':>10} {'GFLOP/s':>8} "
              f"{'peak extra MB':>14} {'x numpy':>8} {'x torch':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{','.join(map(str, r['shape'])):<18} {r['pass']:<17} {r['backend']:<12} "
                     f"{r['median_ms']:>10.1f} {r['gflops']:>8.1f} {num(r['peak_extra_mb'], '14.1f')} "
                     f"{num(r['vs_numpy'], '8.2f')} {num(r['vs_torch'], '8.2f')}")
    for backend, why in (skipped or {}).items():
        lines.append(f"(skipped {backend}: {why})")
    lines.append("peak extra MB: tracemalloc for numpy/numba, peak-RSS rise for torch, pool bytes for cupy, "
                 "max_memory_allocated for torch_cuda; "
                 "x numpy / x torch = their median / this median")
    return "\n".join(lines)


def _parse_shapes(text: str):
    try:
        return tuple(tuple(int(x) for x in s.split(",")) for s in text.split(";") if s.strip())
    except ValueError:
        raise ValueError(f"--shapes wants 'B,H,T,d;B,H,T,d;...'; got {text!r}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_attention", description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(DEFAULT_BACKENDS),
                        help="comma-separated, from: " + ",".join(ALL_BACKENDS))
    parser.add_argument("--shapes", default=";".join(",".join(map(str, s)) for s in DEFAULT_SHAPES),
                        help="semicolon-separated B,H,T,d (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    for b in backends:
        if b not in ALL_BACKENDS:
            parser.error(f"unknown backend {b!r}")
    try:
        shapes = _parse_shapes(args.shapes)
    except ValueError as exc:
        parser.error(str(exc))
    run(backends, shapes, args.repeats, args.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
