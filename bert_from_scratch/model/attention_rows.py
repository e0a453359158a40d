r"""The last attention layer with its queries at some rows only: the rows the heads read.

In pretraining the heads read the last hidden state at the [CLS] rows and the masked rows alone (~17% of the
positions), so the last layer only needs those rows' outputs (``encoder_forward(rows=...)`` in ``blocks.py``).
Each kept row attends to every position, so the keys and values still come from all B*T rows; but the
queries, the scores, the softmax and ``P V`` are needed at the M kept rows only::

    x (B, T, H) ──[Wk; Wv]──> K, V (B, nh, T, d)        every position
    x[rows] (M, H) ──Wq──> Q rows (M, H) ──scatter──> Q (B, nh, Tq, d)   one slot per kept row of a sequence
    attention(Q, K, V, q_pos) (B, nh, Tq, d) ──gather──> ctx (M, H)

Tq is the most kept rows one sequence has; shorter sequences leave slots unused (computed on zero queries,
never read, and given no gradient). The attention core is told each slot's position ``q_pos`` (B, Tq): its
dropout mask is a hash of (sequence, head, query position, key position), so a slot drops exactly what its row
drops in the full (B, nh, T, T) computation, and the result is the full block's at those rows.

The block's output dense, dropout, residual and LayerNorm (``blocks.output_forward``) follow on the M rows; the
CUDA kernel computes every query row, so on that backend ``attention_block_forward`` gathers after the core
instead (``Backend.attention_at_query_rows``).
"""
from __future__ import annotations

from typing import NamedTuple

from ..config import BertConfig
from ..nn.layers import linear_backward, linear_forward
from ..nn.xp import get_array_module
from .params import Scope


class QueryRowsCache(NamedTuple):
    query: tuple            # linear cache of Wq on the M rows
    key_value: tuple        # linear cache of the fused [Wk; Wv] on every row
    core: dict              # the attention core's cache (q_pos among it)
    seq: object             # (M,) each row's sequence
    slot: object            # (M,) each row's query slot in its sequence
    Tq: int                 # slots per sequence
    rows: object            # (M,) the flat rows of (B*T)
    shape: tuple            # (B, T, H, nh, d)


def query_slots(rows, B: int, T: int):
    """rows (M,) sorted flat indices into B*T -> (seq (M,), slot (M,), q_pos (B, Tq)): row m is query ``slot[m]``
    of sequence ``seq[m]``, and ``q_pos[b, s]`` its position in the sequence. Tq is the most rows one sequence
    has; a sequence's unused slots hold position 0 (computed, never read)."""
    xp = get_array_module(rows)
    seq = rows // T
    counts = xp.bincount(seq, minlength=B)                                               # (B,)
    slot = xp.arange(len(rows)) - (xp.cumsum(counts) - counts)[seq]                      # rank within its sequence
    q_pos = xp.zeros((B, max(1, int(counts.max()))), dtype=xp.int64)
    q_pos[seq, slot] = rows % T
    return seq, slot, q_pos


def attention_at_query_rows_forward(x, mask, P: Scope, ops, cfg: BertConfig, att_p: float, seed: int,
                                    row_offset: int, rows):
    """x: (B, T, H), rows (M,) -> (ctx (M, H): the merged heads' output at the rows, x[rows] (M, H), cache).
    ``P``: the attention block's scope (``self.query.*``, ...); ``seed`` keys the attention dropout."""
    xp = get_array_module(x)
    B, T, H = x.shape
    nh, d = cfg.num_attention_heads, cfg.head_size
    M = len(rows)
    x_rows = x.reshape(B * T, H)[rows]                                                    # (M, H)
    q_rows, c_q = linear_forward(x_rows, P["self.query.weight"], P["self.query.bias"])    # (M, H)
    w_kv = xp.concatenate([P["self.key.weight"], P["self.value.weight"]], axis=0)         # (2H, H)
    b_kv = xp.concatenate([P["self.key.bias"], P["self.value.bias"]], axis=0)
    kv, c_kv = linear_forward(x, w_kv, None)                                              # (B, T, 2H), no bias yet
    k, v = ops.split_heads_forward(kv, b_kv, 2, nh)                                       # 2 x (B, nh, T, d), + bias
    seq, slot, q_pos = query_slots(rows, B, T)
    Tq = q_pos.shape[1]
    q = xp.zeros((B, Tq, nh, d), dtype=x.dtype)
    q[seq, slot] = q_rows.reshape(M, nh, d)
    q = xp.ascontiguousarray(q.transpose(0, 2, 1, 3))                                     # (B, nh, Tq, d)
    ctx, c_core = ops.attention_forward(q, k, v, mask, att_p, seed, row_offset=row_offset, q_pos=q_pos)
    ctx = ctx.transpose(0, 2, 1, 3)[seq, slot].reshape(M, H)                              # (M, H), rows' order
    return ctx, x_rows, QueryRowsCache(c_q, c_kv, c_core, seq, slot, Tq, rows, (B, T, H, nh, d))


def attention_at_query_rows_backward(dctx, dx_rows, cache: QueryRowsCache, G: Scope, ops):
    """dctx (M, H) on the forward's ctx, dx_rows (M, H) on x[rows] (the residual's share) -> dx (B, T, H);
    accumulates Wq, Wk, Wv and their biases' gradients into ``G``."""
    xp = get_array_module(dctx)
    B, T, H, nh, d = cache.shape
    M = len(cache.rows)
    # forward: ctx = merge_heads(attention(q, k, v))[seq, slot]; the unused slots get no gradient
    dctx_q = xp.zeros((B, cache.Tq, nh, d), dtype=dctx.dtype)
    dctx_q[cache.seq, cache.slot] = dctx.reshape(M, nh, d)
    dctx_q = dctx_q.transpose(0, 2, 1, 3)                                                 # (B, nh, Tq, d), a view
    dq, dk, dv = ops.attention_backward(dctx_q, cache.core)
    dq_rows = dq.transpose(0, 2, 1, 3)[cache.seq, cache.slot].reshape(M, H)               # (M, H)
    dx_q, dw_q, db_q = linear_backward(dq_rows, cache.query)                              # (M, H)
    G.add("self.query.weight", dw_q)
    G.add("self.query.bias", db_q)
    dkv, db_kv = ops.split_heads_backward((dk, dv))                                       # (B, T, 2H), (2H,)
    dx, dw_kv, _ = linear_backward(dkv, cache.key_value, bias=False)                      # (B, T, H)
    for j, n in enumerate(("key", "value")):
        G.add(f"self.{n}.weight", dw_kv[j * H:(j + 1) * H])
        G.add(f"self.{n}.bias", db_kv[j * H:(j + 1) * H])
    dx = xp.ascontiguousarray(dx).reshape(B * T, H)
    dx[cache.rows] += dx_q + dx_rows                            # the rows are distinct: no repeats to add
    return dx.reshape(B, T, H)


def scatter_query_rows(a, cache: QueryRowsCache):
    """(B, nh, Tq, T) per-slot rows (the core's ``grad_probs``) -> (B, nh, T, T), zero at the rows never computed:
    what the full computation holds, since nothing reads those rows' outputs. Slots are added, not assigned, so an
    unused slot (position 0, all zeros) cannot overwrite row 0."""
    xp = get_array_module(a)
    B, T, H, nh, d = cache.shape
    full = xp.zeros((B, nh, T, a.shape[-1]), dtype=a.dtype)
    q_pos = cache.core["q_pos"]                                                          # (B, Tq)
    for s in range(cache.Tq):
        full[xp.arange(B), :, q_pos[:, s]] += a[:, :, s]
    return full
