"""Time the CUDA attention kernel's launch shapes on a GPU (used by .ci/gpu; prints a table).

For each (THREADS_PER_ROW, ROWS_PER_BLOCK): median ms of forward and forward+backward, float32,
CUDA events, 20 runs after a warm-up, on the benchmark's T=512 and T=2048 shapes.
"""
import statistics

import cupy as cp
import numpy as np

from bert_from_scratch.bench.attention import _time_cuda
from bert_from_scratch.kernels import cuda_attention as ca

SHAPES = [(2, 12, 512, 64), (1, 12, 2048, 64)]
CONFIGS = [(1, 32), (1, 64), (2, 16), (2, 32), (2, 64), (4, 16), (4, 32), (4, 64), (8, 16), (8, 32), (8, 64)]


def median_ms(fn, repeats=20):
    fn()                                             # warm-up (and NVRTC compile)
    return statistics.median(_time_cuda(fn, repeats))


rng = np.random.default_rng(0)
print(f"{'lanes/row':>9} {'rows/block':>10} " + " ".join(f"{f'T={s[2]} fwd':>11} {f'T={s[2]} fwd+bwd':>15}"
                                                        for s in SHAPES))
for g, rows in CONFIGS:
    ca.THREADS_PER_ROW, ca.ROWS_PER_BLOCK = g, rows
    cells = []
    for shape in SHAPES:
        q, k, v, dout = (cp.asarray(rng.standard_normal(shape).astype(np.float32)) for _ in range(4))

        def fwd():
            return ca.attention_forward(q, k, v)

        def fwd_bwd():
            out, cache = ca.attention_forward(q, k, v)
            return ca.attention_backward(dout, cache)
        cells.append(f"{median_ms(fwd):>11.3f} {median_ms(fwd_bwd):>15.3f}")
    print(f"{g:>9} {rows:>10} " + " ".join(cells), flush=True)
