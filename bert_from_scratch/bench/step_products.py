"""The default step's linear-layer products alone, timed in one matmul library: the part of the step no code of
ours can make faster, and how fast each side's library does it.

``bench train-step --case default-step`` compares our step with torch eager doing the same work, on the same
machine. Most of either step is matrix products, and each side calls its own library for them: NumPy's OpenBLAS
for ours, torch's own BLAS (Intel's MKL in the x86 wheels) for torch. Their rates at the step's shapes differ
by machine: on an Intel Xeon (Sapphire Rapids) VM MKL ran these products ~1.15x as fast as OpenBLAS, on the
AMD EPYC VMs no faster (docs/performance.md). This module lists the products of one step as ours runs them and
times them, one product at a time, in either library, so that the bench can print what the products alone cost
each side, and the ratio to torch's step they alone would give ours.

The products: every linear layer ``y = x W^T`` (``W`` is (out, in), as ``nn/layers.py``) on ``n`` rows makes
three, in ours' layouts::

    forward          x (n, in) @ W^T (in, out)        W^T a transposed view
    input gradient   dy (n, out) @ W (out, in)
    weight gradient  dy^T (out, n) @ x (n, in)        dy^T a transposed view

The layers are those of :func:`bench.train_step.model_flops`: per encoder layer the fused Q, K, V projection
(``in`` = H, ``out`` = 3H), the attention's output dense and the FFN's two; with ``last_layer_rows`` the last
layer's K and V at every position and its Q, output dense and FFN at those rows; the MLM transform and the tied
decoder at the predicted rows (``in`` = H + 1: its bias is a column of the product,
``linear_bias_in_product_forward``); the pooler and the NSP classifier at the [CLS] rows. Their FLOPs are
``model_flops`` less the attention core's ``QK^T`` and ``PV`` (many 64-wide products inside each side's attention
kernel, not one library call), plus the decoder's bias column. ``tests/test_step_products.py`` checks that sum,
and that the forward products are the shapes ours' step hands to ``linear_forward``.
"""
from __future__ import annotations

import statistics
import time

import numpy as np


def linear_products(H: int, I: int, L: int, V: int, B: int, T: int, n_predicted: int,
                    last_layer_rows: int | None = None) -> list[tuple[int, int, int, bool, bool]]:
    """``(m, k, n, a_transposed, b_transposed)`` for each product of one step: an (m, k) @ (k, n) product, an
    operand a transposed view where its flag says so (the forward's ``W^T``, the weight gradient's ``dy^T``).
    Sizes as ``model_flops``'s."""
    products = []

    def linear(rows: int, n_in: int, n_out: int):
        products.extend([(rows, n_in, n_out, False, True),   # forward: x W^T
                         (rows, n_out, n_in, False, False),  # input gradient: dy W
                         (n_out, rows, n_in, True, False)])  # weight gradient: dy^T x

    BT = B * T
    for layer in range(L):
        at_rows = last_layer_rows is not None and layer == L - 1
        rows = last_layer_rows if at_rows else BT
        if not at_rows:
            linear(BT, H, 3 * H)                             # Q, K, V in one product
        else:
            linear(BT, H, 2 * H)                             # K, V at every position
            linear(rows, H, H)                               # Q at the heads' rows
        linear(rows, H, H)                                   # attention output dense
        linear(rows, H, I)                                   # FFN in
        linear(rows, I, H)                                   # FFN out
    linear(n_predicted, H, H)                                # MLM transform
    linear(n_predicted, H + 1, V)                            # tied decoder, its bias in the product (nn/layers.py)
    linear(B, H, H)                                          # pooler
    linear(B, H, 2)                                          # NSP classifier
    return products


def products_flops(products) -> float:
    """2 m k n summed: the FLOPs of the products."""
    return float(sum(2 * m * k * n for m, k, n, *_ in products))


def _operands(products, seed: int = 0):
    rng = np.random.default_rng(seed)
    pairs = []
    for m, k, n, a_transposed, b_transposed in products:
        a = rng.standard_normal((k, m) if a_transposed else (m, k), dtype=np.float32)
        b = rng.standard_normal((n, k) if b_transposed else (k, n), dtype=np.float32)
        pairs.append((a.T if a_transposed else a, b.T if b_transposed else b))
    return pairs


#: calls per product, each product's time their median (the bench's line names it)
REPEATS = 5


def time_products(products, library: str = "numpy", repeats: int = REPEATS) -> float:
    """Seconds: each product's median over ``repeats`` calls (after two untimed ones), summed over the products.
    ``library``: "numpy" (``np.matmul``, NumPy's BLAS) or "torch" (``torch.matmul`` on CPU tensors sharing the same
    float32 values and layouts), each with the thread count its process already has."""
    if repeats < 1:
        raise ValueError(f"need repeats >= 1, got {repeats}")
    pairs = _operands(products)
    if library == "torch":
        import torch
        def tensor(x):                                       # the same memory, the same layout
            return torch.from_numpy(x) if x.flags.c_contiguous else torch.from_numpy(x.T).T
        pairs = [(tensor(a), tensor(b)) for a, b in pairs]
    elif library != "numpy":
        raise ValueError(f"library must be 'numpy' or 'torch', got {library!r}")
    total = 0.0
    for a, b in pairs:
        times = []
        for i in range(repeats + 2):
            t = time.perf_counter()
            a @ b
            if i >= 2:
                times.append(time.perf_counter() - t)
        total += statistics.median(times)
    return total


def library_name(library: str = "numpy") -> str:
    """The BLAS behind ``library``'s float32 matmul, in a few words: "OpenBLAS 0.3.31, SkylakeX", "MKL"."""
    if library == "torch":
        import torch
        return "MKL" if torch.backends.mkl.is_available() else "torch's own BLAS"
    from ..nn.blas_pair import numpy_openblas
    blas = numpy_openblas()
    if blas is None:
        return "NumPy's BLAS"
    arch = getattr(blas, "architecture", None)
    return f"OpenBLAS {blas.version}" + (f", {arch}" if arch else "")


#: the bench's sides whose processes time the products, and their library: ours (the job's step) and torch doing
#: the job's work
TIMED_SIDES = {"ours": "numpy", "torch_rows": "torch"}


def job_products(cfg, batch: dict, heads_rows: bool = True) -> list[tuple[int, int, int, bool, bool]]:
    """The products of the default job's step on ``batch`` (``bench/default_step.py``'s): the last layer at the
    heads' rows (the predicted rows and the [CLS] rows), or at every position with ``heads_rows`` False (the
    equal-work step's)."""
    labels = np.asarray(batch["labels"])
    B, T = labels.shape
    n_predicted = int((labels != -100).sum())
    return linear_products(cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size, B, T,
                           n_predicted, n_predicted + B if heads_rows else None)


def side_products(side: str, cfg, batch: dict) -> dict:
    """In a side's process: ``{"products_s", "products_library"}`` for a side of :data:`TIMED_SIDES`, else {}."""
    library = TIMED_SIDES.get(side)
    if library is None:
        return {}
    return {"products_s": time_products(job_products(cfg, batch), library), "products_library": library_name(library)}
