"""bench/step_products.py: the default step's linear-layer products, as ours' step makes them, timed in a library."""
from __future__ import annotations

from collections import Counter

import pytest

from bert_from_scratch.bench import default_step, step_products
from bert_from_scratch.bench.train_step import model_flops
from bert_from_scratch.model import attention_rows, blocks
from bert_from_scratch.nn import layers


def _attention_core_flops(cfg, B, T, last_layer_rows=None):
    """model_flops' QK^T and PV: 4 T H per row and layer, times 3 (forward and backward)."""
    H, L = cfg.hidden_size, cfg.num_hidden_layers
    rows = B * T * L if last_layer_rows is None else B * T * (L - 1) + last_layer_rows
    return 3.0 * rows * 4 * T * H


@pytest.mark.parametrize("L,B,T,n_pred,rows", [(2, 128, 64, 1229, 1357), (2, 3, 16, 6, 9), (3, 4, 32, 10, None),
                                                (1, 5, 16, 7, 12), (2, 2, 8, 4, 16)])
def test_the_products_are_model_flops_less_the_attention_core(L, B, T, n_pred, rows):
    """The products' FLOPs are model_flops less the attention core, plus the decoder's folded bias column (the last
    layer at rows as many as B T included: its Q apart from K and V all the same); a list that forgets the last
    layer runs at the heads' rows is told apart."""
    cfg = default_step.job_config(500, T)
    cfg.num_hidden_layers = L
    H, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    products = step_products.linear_products(H, I, L, V, B, T, n_pred, rows)
    assert len(products) == 3 * (4 * L + (1 if rows is not None else 0) + 4)
    expected = model_flops(cfg, B, T, n_pred, rows) - _attention_core_flops(cfg, B, T, rows) + 3 * 2 * n_pred * V
    assert step_products.products_flops(products) == pytest.approx(expected, rel=1e-12)
    if rows is not None and rows < B * T:
        everywhere = step_products.linear_products(H, I, L, V, B, T, n_pred, None)
        assert step_products.products_flops(everywhere) != pytest.approx(expected, rel=1e-6)


def test_the_forward_products_are_the_shapes_ours_step_hands_to_linear_forward(monkeypatch):
    """One real step of the job's model (the last layer at the heads' rows) records every ``linear_forward``'s
    (rows, in, out): exactly the list's forward products; the list for the last layer at every position is not."""
    cfg = default_step.job_config(500, 16)
    batch = default_step.make_job_batch(cfg, 5, 16, seed=3)
    seen = []
    original = layers.linear_forward

    def recording(x, weight, bias):
        seen.append((x.reshape(-1, x.shape[-1]).shape[0], weight.shape[1], weight.shape[0]))
        return original(x, weight, bias)
    for module in (layers, blocks, attention_rows):
        monkeypatch.setattr(module, "linear_forward", recording)
    step, _ = default_step._ours_steps(cfg, batch, "numpy")
    step()
    products = step_products.job_products(cfg, batch)
    forward = Counter((m, k, n) for (m, k, n, *_) in products[0::3])
    assert all(p[3:] == (False, True) for p in products[0::3])                                   # x @ W^T
    assert Counter(seen) == forward
    n_pred = int((batch["labels"] != -100).sum())
    everywhere = step_products.linear_products(cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
                                               cfg.vocab_size, 5, 16, n_pred, None)
    assert Counter(seen) != Counter((m, k, n) for (m, k, n, *_) in everywhere[0::3])
    # the equal-work step (the last layer at every position): its own list, the every-position one
    assert step_products.job_products(cfg, batch, heads_rows=False) == everywhere
    seen.clear()
    default_step._ours_steps(cfg, batch, "numpy", heads_rows=False)[0]()
    assert Counter(seen) == Counter((m, k, n) for (m, k, n, *_) in everywhere[0::3])
    # each forward's two backward products: the input's gradient, and the weight's with a transposed left operand
    for (m, k, n, *_), gx, gw in zip(products[0::3], products[1::3], products[2::3]):
        assert gx == (m, n, k, False, False) and gw == (n, m, k, True, False)


def test_the_products_time_in_either_library_and_bad_arguments_are_refused():
    products = step_products.linear_products(128, 512, 1, 500, 2, 16, 4, 6)
    for (m, k, n, a_t, b_t), (a, b) in zip(products, step_products._operands(products)):
        assert a.shape == (m, k) and b.shape == (k, n)                   # transposed views where the flags say
        assert (a.flags.c_contiguous, b.flags.c_contiguous) == (not a_t, not b_t)
    seconds = step_products.time_products(products, "numpy", repeats=1)
    assert 0 < seconds < 10
    assert step_products.library_name("numpy")
    with pytest.raises(ValueError, match="library must be 'numpy' or 'torch', got 'jax'"):
        step_products.time_products(products, "jax")
    with pytest.raises(ValueError, match="need repeats >= 1, got 0"):
        step_products.time_products(products, "numpy", repeats=0)
    assert step_products.side_products("torch_hf", None, {}) == {}          # not a timed side: nothing measured
    pytest.importorskip("torch")
    assert 0 < step_products.time_products(products, "torch", repeats=1) < 10
    assert step_products.library_name("torch") in ("MKL", "torch's own BLAS")


def test_the_products_line_names_torch_only_when_torch_ran():
    ours = {"gflop": 21.23, "products_library": "OpenBLAS 0.3.31, SkylakeX", "products_ms": 84.9}
    alone = default_step._products_line({"ours": ours}, 20.29)
    assert alone.endswith("ours' np.matmul (OpenBLAS 0.3.31, SkylakeX) 84.9 ms") and "torch" not in alone
    theirs = {"products_library": "MKL", "products_ms": 69.6, "ms_per_step": 190.2}
    both = default_step._products_line({"ours": ours, "torch_rows": theirs}, 20.29)
    assert "(20.29 of its 21.23 GFLOP;" in both
    assert "torch's torch.matmul (MKL) 69.6 ms, in each side's process: torch's library 1.22x as fast" in both
    assert both.endswith("ours' products alone take 0.45x of torch's step doing the job's work")
