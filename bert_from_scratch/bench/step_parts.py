"""Where one training step's time goes, by part: ``bench train-step --case default-step --profile``
(:func:`profile_default_step`: ours' two steps of ``default_step.py``, the job's and the equal-work one).

cProfile counts each function's own time (``tottime``) on the thread that runs the step: a Numba kernel's call is
one entry, and so is each ``linear_forward`` / ``linear_backward`` / ``matmul_pair`` (``nn/blas_pair.py``: a
backward's two products side by side), whose own time is almost all the BLAS products it runs (``x @ W.T`` is an
operator, not a call cProfile sees; a pair's wait for its helper thread is a lock's ``acquire``, left in the glue).
:func:`part_of` puts every entry in one of the parts below by its file and name; what no part claims is Python and
NumPy glue. The profiler adds its own cost to the glue (~1 us a call, a few thousand calls a step), so the step is
also timed without it and both totals are printed. The forward-backward case's ``--profile``
(``train_step.profile_ours``) prints the same table for one step.
"""
from __future__ import annotations

import os
import statistics

from .step_products import REPEATS as PRODUCT_REPEATS, job_products, time_products
from .train_step import WARMUP

#: (part, the files' base names, test on the function's name), in the order printed; the first that matches wins
PARTS = (
    ("linear layers: BLAS products, bias sums", ("layers.py", "blas_pair.py"),
     lambda n: n.startswith("linear_") or n in ("row_sum", "matmul_pair")),
    ("attention kernels", ("numba_attention.py",), lambda n: n.endswith("_kernel")),
    ("bias + GELU", ("numba_fused.py",), lambda n: n.startswith("bias_gelu") and n.endswith("_kernel")),
    ("dropout + residual + LayerNorm", ("numba_fused.py",), lambda n: n.startswith("residual_layernorm")),
    ("cross-entropy", ("numba_loss.py",), lambda n: n.endswith("_kernel")),
    ("heads' split and stack", ("numba_heads.py",), lambda n: n.endswith("_kernel")),
    ("AdamW", ("numba_optim.py",), lambda n: n.startswith("_adamw")),
    ("other Numba kernels (embeddings, LayerNorm, dropout)", None, lambda n: n.endswith("_kernel")),
)
GLUE = "Python and NumPy glue"
KERNEL_FILES_PREFIX = "numba_"       # the Numba backend's modules: kernels/numba_*.py


def part_of(filename: str, name: str) -> str:
    """The part a profiled function ``name`` of file ``filename`` belongs to (``GLUE`` when none claims it)."""
    base = os.path.basename(filename)
    for part, files, test in PARTS:
        if files is None:
            if base.startswith(KERNEL_FILES_PREFIX) and test(name):
                return part
        elif base in files and test(name):
            return part
    return GLUE


def split_stats(stats: dict, steps: int, n_glue: int = 6) -> tuple[dict, list]:
    """``pstats.Stats(...).stats`` -> (``{part: seconds per step}``, every part of :data:`PARTS` and ``GLUE``
    listed; the ``n_glue`` largest glue entries as ``(seconds per step, calls per step, "file:line(name)")``)."""
    parts = {part: 0.0 for part, _, _ in PARTS}
    parts[GLUE] = 0.0
    glue = []
    for (filename, line, name), (_cc, n_calls, tottime, _ct, _callers) in stats.items():
        part = part_of(filename, name)
        parts[part] += tottime / steps
        if part == GLUE:
            where = name if filename == "~" else f"{os.path.basename(filename)}:{line}({name})"
            glue.append((tottime / steps, n_calls / steps, where))
    return parts, sorted(glue, reverse=True)[:n_glue]


def profile_steps(step, steps: int) -> tuple[dict, list]:
    """Run ``step()`` ``steps`` times under cProfile: :func:`split_stats` of those steps."""
    import cProfile
    import pstats
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    return split_stats(pstats.Stats(profiler).stats, steps)


def format_parts(title: str, step_s: float, parts: dict, glue: list = (), products_s: float | None = None) -> str:
    """A table: each part's ms per step and share of the profiled step, then both totals, then the largest glue
    entries; with ``products_s``, the step's linear-layer products timed alone (``bench/step_products.py``)."""
    total = sum(parts.values())
    width = max(len(p) for p in parts)
    lines = [title, f"{'part':<{width}}  ms/step  share", "-" * (width + 16)]
    for part, seconds in parts.items():
        lines.append(f"{part:<{width}}  {1e3 * seconds:7.1f}  {100 * seconds / total:4.1f}%")
    lines.append(f"{'total under the profiler':<{width}}  {1e3 * total:7.1f}")
    lines.append(f"{'the same step, no profiler (median)':<{width}}  {1e3 * step_s:7.1f}")
    if glue:
        lines.append("largest glue entries (ms/step, calls/step): " + "; ".join(
            f"{where} {1e3 * seconds:.2f} ({calls:g})" for seconds, calls, where in glue))
    if products_s is not None:
        lines.append(f"the step's linear-layer products alone (bench/step_products.py: each product's median of "
                     f"{PRODUCT_REPEATS} calls, summed, no pairs): {1e3 * products_s:.1f} ms, against "
                     f"{1e3 * parts[PARTS[0][0]]:.1f} ms for its first part inside the step")
    return "\n".join(lines)


def profile_default_step(B=128, T=64, steps=10, max_predictions=20, backend="auto", keep_memory=True,
                         vocab_size=8000, warmup=WARMUP, seed=0) -> dict:
    """``--profile``: where ours' two steps (the job's, and the equal-work one) spend their time, by part
    (:data:`PARTS`), in this process, one side after the other, each warmed up first, and what the step's
    linear-layer products take alone. Prints a table per side and returns ``{side: (seconds per step without the
    profiler, {part: seconds per step}, largest glue entries, the products alone in seconds)}``."""
    from .default_step import SIDES, _build_side, _time_steps, job_config, make_job_batch
    if steps < 1 or warmup < 0 or B < 1 or T < 8 or max_predictions < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0, batch >= 1, seq >= 8 and masked >= 1; got repeats "
                         f"{steps}, warmup {warmup}, batch {B}, seq {T}, masked {max_predictions}")
    cfg = job_config(vocab_size, T)
    batch = make_job_batch(cfg, B, T, max_predictions, seed=seed)
    result = {}
    for side in ("ours", "ours_full"):
        step, info = _build_side(side, cfg.to_dict(), batch, backend, keep_memory)
        times = _time_steps(step, steps, warmup)                         # warmed up, then timed as they are
        profiled = (statistics.median(times), *profile_steps(step, steps))
        result[side] = (*profiled, time_products(job_products(cfg, batch, heads_rows=side == "ours")))
        print(format_parts(f"{SIDES[side]}: backend={info['backend']}, B={B}, T={T}, {steps} steps each way",
                           *result[side]))
        print()
    return result
