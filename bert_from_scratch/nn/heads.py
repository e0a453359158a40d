r"""From the fused projection's layout to the attention heads' and back, with the projection's bias.

The query, key and value projections run as one matmul whose output row holds P parts side by side (P = 3:
``[q | k | v]``; P = 2, ``[k | v]``, for the last layer at the heads' rows, ``model/attention_rows.py``), each
part its ``nh`` heads of ``d`` values side by side. The attention core wants one contiguous ``(B, nh, T, d)``
array per part::

    y (B, T, P*nh*d) + b (P*nh*d,)  ── split_heads_forward ──>  P x (B, nh, T, d)
    dy (B, T, P*nh*d), db (P*nh*d,) <── split_heads_backward ──  P x (B, nh, T, d)

The bias is added here rather than by the matmul (``linear_forward(x, W, None)``), and its gradient, the sum
of ``dy`` over rows, comes out of the backward: the Numba backend (``kernels/numba_heads.py``) does each
direction as one parallel pass per part, where the code below makes a pass for the bias, a strided copy per
part, and another pass for the bias's gradient. This is the readable reference (NumPy or CuPy).
"""
from __future__ import annotations

from .layers import row_sum
from .xp import get_array_module


def split_heads_forward(y, bias, n_parts: int, n_heads: int):
    """y: (B, T, P*nh*d) without its bias, bias: (P*nh*d,) -> a tuple of P contiguous (B, nh, T, d) arrays."""
    xp = get_array_module(y)
    B, T, width = y.shape
    d = width // (n_parts * n_heads)
    parts = (y + bias).reshape(B, T, n_parts, n_heads, d).transpose(2, 0, 3, 1, 4)       # P x (B, nh, T, d)
    return tuple(xp.ascontiguousarray(parts[j]) for j in range(n_parts))


def split_heads_backward(grads):
    """The P parts' gradients, each (B, nh, T, d) -> (dy (B, T, P*nh*d), dbias (P*nh*d,)).
    One strided copy per part into one buffer in the projection's layout, then the bias's row sum."""
    xp = get_array_module(grads[0])
    B, nh, T, d = grads[0].shape
    dy = xp.empty((B, T, len(grads), nh, d), dtype=grads[0].dtype)
    for j, g in enumerate(grads):
        dy[:, :, j] = g.transpose(0, 2, 1, 3)                                              # (B, T, nh, d)
    dy = dy.reshape(B, T, len(grads) * nh * d)
    return dy, row_sum(dy.reshape(B * T, -1))
