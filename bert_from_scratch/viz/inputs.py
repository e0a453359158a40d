"""The input side of every view: attention tensors brought to ``(L, H, T, T)`` and checked.

An *attention tensor* is the softmax probability ``A[l, h, i, j]``: how much query token ``i``
reads from key token ``j`` in head ``h`` of layer ``l``; every row ``A[l, h, i, :]`` sums to 1.
The functions accept what a model returns (``out.attentions``: a tuple of ``L`` arrays of shape
``(B, H, T, T)``; pick the sequence with ``batch_index``) or a stacked ``(L, H, T, T)`` array.
CuPy arrays are copied to the host.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..nn.xp import to_numpy


def stack_attentions(attentions, batch_index: int = 0, length: int | None = None) -> np.ndarray:
    """Bring attentions to one ``(L, H, T, T)`` float NumPy array.

    Accepts a tuple/list of ``L`` arrays ``(B, H, T, T)`` (a model's ``out.attentions``; sequence
    ``batch_index`` is taken) or ``(H, T, T)``, or one array ``(L, B, H, T, T)``, ``(L, H, T, T)``,
    ``(H, T, T)`` (one layer) or ``(T, T)`` (one head). ``length`` keeps the first ``length`` tokens
    (drop the padding of a batched sequence: ``length = attention_mask[b].sum()``).
    """
    if isinstance(attentions, (list, tuple)):
        if len(attentions) == 0:
            raise ValueError("attentions is an empty sequence: ask the model for output_attentions=True")
        layers = [to_numpy(a) for a in attentions]
        ndims = {a.ndim for a in layers}
        if ndims == {4}:
            if not -layers[0].shape[0] <= batch_index < layers[0].shape[0]:
                raise ValueError(f"batch_index {batch_index} is out of range for a batch of {layers[0].shape[0]}")
            layers = [a[batch_index] for a in layers]
        elif ndims != {3}:
            raise ValueError(f"each layer's attention must be (B, H, T, T) or (H, T, T); got shapes "
                             f"{[a.shape for a in layers]}")
        if len({a.shape for a in layers}) != 1:
            raise ValueError(f"layers have different attention shapes: {sorted({a.shape for a in layers})}")
        att = np.stack(layers)
    else:
        att = to_numpy(attentions)
        if att.ndim == 5:
            if not -att.shape[1] <= batch_index < att.shape[1]:
                raise ValueError(f"batch_index {batch_index} is out of range for a batch of {att.shape[1]}")
            att = att[:, batch_index]
        elif att.ndim == 3:
            att = att[None]
        elif att.ndim == 2:
            att = att[None, None]
        elif att.ndim != 4:
            raise ValueError(f"attentions must have 2 to 5 dimensions ((T,T) ... (L,B,H,T,T)); got shape {att.shape}")
    if att.shape[-1] != att.shape[-2]:
        raise ValueError(f"attention maps must be square (T x T); got {att.shape[-2]} x {att.shape[-1]}")
    if not np.issubdtype(att.dtype, np.floating):
        att = att.astype(np.float64)
    if not np.all(np.isfinite(att)):
        raise ValueError("attentions contain NaN or infinite values")
    if length is not None:
        if not 1 <= length <= att.shape[-1]:
            raise ValueError(f"length must be in 1..{att.shape[-1]}; got {length}")
        att = att[..., :length, :length]
    return att                                                          # (L, H, T, T)


def check_attention_probabilities(att: np.ndarray, atol: float = 1e-3) -> None:
    """Raise ``ValueError`` unless every row ``att[..., i, :]`` is a probability distribution.

    Catches a transposed map (keys x queries: its *columns* sum to 1), raw scores before the
    softmax, and a map cropped past padding. ``atol`` allows float32 rounding and the
    ``exp(-10000)`` mass left on padding.
    """
    att = np.asarray(att)
    if att.min() < -atol:
        raise ValueError(f"attention has negative entries (min {att.min():.3g}): pass softmax probabilities")
    row_sums = att.sum(axis=-1)                                         # (..., T)
    worst = np.unravel_index(np.argmax(np.abs(row_sums - 1.0)), row_sums.shape)
    if abs(row_sums[worst] - 1.0) > atol:
        raise ValueError(f"attention rows must sum to 1 (query i -> keys j); row {worst[-1]} at index "
                         f"{worst[:-1]} sums to {row_sums[worst]:.4f}. Is the map transposed (keys x queries), "
                         "not softmax-ed, or cropped past real tokens?")


def _check_tokens(tokens, T: int) -> list[str]:
    if isinstance(tokens, str):
        raise ValueError("tokens must be a list of strings (one per position), not one string")
    tokens = [str(t) for t in tokens]
    if len(tokens) != T:
        raise ValueError(f"attention covers {T} tokens but {len(tokens)} token labels were given; pass one label "
                         f"per position, or drop padding with stack_attentions(..., length={len(tokens)})")
    return tokens


def _cap_tokens(att: np.ndarray, tokens: list[str], max_tokens: int | None):
    """Keep the first ``max_tokens`` positions, with a warning that says so."""
    T = att.shape[-1]
    if max_tokens is None or T <= max_tokens:
        return att, tokens, False
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1; got {max_tokens}")
    warnings.warn(f"the input has {T} tokens, more than max_tokens={max_tokens}: showing the first {max_tokens} "
                  f"(rows no longer sum to 1). Pass max_tokens=None to show all {T}, or a shorter text.",
                  stacklevel=3)
    return att[..., :max_tokens, :max_tokens], tokens[:max_tokens], True


def _select(indices, n: int, what: str) -> list[int]:
    """``None`` -> all of ``range(n)``; else check each index (negatives count from the end)."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, (int, np.integer)):
        indices = [indices]
    out = []
    for i in indices:
        if not -n <= int(i) < n:
            raise ValueError(f"{what} {i} does not exist: there are {n} {what}s (0..{n - 1})")
        out.append(int(i) % n)
    if not out:
        raise ValueError(f"select at least one {what}")
    return out
