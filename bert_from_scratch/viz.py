r"""Looking inside attention: heatmaps, head and model views, head statistics, rollout, attribution.

Everything here takes plain NumPy arrays (CuPy arrays are copied to the host) and returns
matplotlib figures or HTML text; nothing needs a model except the two model-level helpers
at the end (:func:`model_attention_attribution`, :func:`cli_attention`).

An *attention tensor* is the softmax probability ``A[l, h, i, j]``: how much query token ``i``
reads from key token ``j`` in head ``h`` of layer ``l``; every row ``A[l, h, i, :]`` sums to 1.
The functions accept what a model returns (``out.attentions``: a tuple of ``L`` arrays of shape
``(B, H, T, T)``; pick the sequence with ``batch_index``) or a stacked ``(L, H, T, T)`` array.

What is here
------------
* :func:`plot_attention_heatmap` -- one layer/head (or any ``T x T`` map) with token labels.
* :func:`plot_model_view` -- the layers x heads grid of small heatmaps.
* :func:`plot_head_view` -- one layer, lines from each query token to each key token, width = weight.
* :func:`attention_html`, :func:`save_attention_html`, :func:`show_attention` -- the head/model views as
  self-contained HTML: the weights as JSON in an inline script, no CDN, no network. The first
  picture is drawn by Python as inline SVG, so it shows even where scripts do not run (an
  untrusted notebook, a static HTML viewer); the inline script only adds the interaction.
* :func:`head_statistics`, :func:`plot_head_statistics` -- Clark et al. 2019, "What does BERT look at?".
* :func:`attention_rollout` -- Abnar & Zuidema 2020, "Quantifying attention flow in transformers".
* :func:`attention_attribution`, :func:`head_importance`, :func:`model_attention_attribution` --
  attention x gradient (Michel et al. 2019; Hao et al. 2021 integrate the same product along a path).
* :func:`save_figure`, :func:`add_attention_arguments`, :func:`cli_attention` -- export and the CLI.
"""
from __future__ import annotations

import argparse
import html
import json
import string
import sys
import unicodedata
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .xp import to_numpy

#: colours of heads 0, 1, 2, ... in the head view (matplotlib's tab10 followed by two more)
HEAD_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
               "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939")

#: the statistics of :func:`head_statistics`, in plotting order
STATISTICS = ("cls", "sep", "punct", "prev", "next", "entropy")
STATISTIC_TITLES = {"cls": "attention to [CLS]", "sep": "attention to [SEP]", "punct": "attention to punctuation",
                    "prev": "attention to previous token", "next": "attention to next token",
                    "entropy": "attention entropy (nats)"}

#: figure formats :func:`save_figure` writes
FIGURE_FORMATS = (".png", ".svg", ".pdf")


# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# matplotlib figures
# --------------------------------------------------------------------------------------
def _pyplot():
    """matplotlib.pyplot, imported on first use (set ``MPLBACKEND=Agg`` on a machine without a display)."""
    import matplotlib.pyplot as plt

    return plt


def plot_attention_heatmap(attentions, tokens, layer: int = 0, head: int = 0, batch_index: int = 0,
                           ax=None, max_tokens: int | None = 64, cmap: str = "viridis", title: str | None = None,
                           annotate: bool | None = None, key_tokens=None):
    """Heatmap of one head: row ``i`` = query token, column ``j`` = key token, colour = ``A[i, j]``.

    ``attentions`` may also be any single ``(T, T)`` map (a rollout, an attribution), in which case
    ``layer``/``head`` are ignored. ``annotate`` writes the weights in the cells (default: when
    ``T <= 12``). Returns the figure.
    """
    att = stack_attentions(attentions, batch_index)                    # (L, H, T, T)
    layer, = _select(layer, att.shape[0], "layer")
    head, = _select(head, att.shape[1], "head")
    tokens = _check_tokens(tokens, att.shape[-1])
    a, tokens, capped = _cap_tokens(att[layer, head], tokens, max_tokens)   # (T, T)
    T = len(tokens)
    plt = _pyplot()
    if ax is None:
        side = min(12.0, 2.0 + 0.35 * T)
        fig, ax = plt.subplots(figsize=(side + 1.0, side))
    else:
        fig = ax.figure
    image = ax.imshow(a, cmap=cmap, vmin=0.0, vmax=max(float(a.max()), 1e-12), aspect="equal")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(T), tokens, rotation=90)
    ax.set_yticks(range(T), tokens)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if annotate is None:
        annotate = T <= 12
    if annotate:
        fmt = ".2f" if a.max() >= 0.1 else ".1e"      # small maps (attributions) need an exponent
        for i in range(T):
            for j in range(T):
                ax.text(j, i, format(a[i, j], fmt), ha="center", va="center", fontsize=7 if fmt == ".2f" else 5,
                        color="black" if a[i, j] > 0.6 * a.max() else "white")
    if title is None:
        title = f"layer {layer}, head {head}" if att.shape[:2] != (1, 1) else ""
        if capped:
            title += f" (first {T} tokens)"
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_model_view(attentions, tokens, layers=None, heads=None, batch_index: int = 0,
                    max_tokens: int | None = 48, cell_inches: float = 1.3, cmap: str = "Blues",
                    token_labels: bool | None = None):
    """The grid of all (or the chosen) layers x heads, one small heatmap each (bertviz's model view).

    Each cell is scaled to its own maximum, so diffuse heads stay visible. Token labels are drawn
    on the left column and bottom row when ``T <= 16`` (or ``token_labels=True``). The figure has
    exactly ``len(layers) * len(heads)`` axes, row-major: ``fig.axes[r * len(heads) + c]``.
    """
    att = stack_attentions(attentions, batch_index)
    layers = _select(layers, att.shape[0], "layer")
    heads = _select(heads, att.shape[1], "head")
    tokens = _check_tokens(tokens, att.shape[-1])
    att, tokens, capped = _cap_tokens(att, tokens, max_tokens)
    T = len(tokens)
    if token_labels is None:
        token_labels = T <= 16
    plt = _pyplot()
    extra = 0.9 if token_labels else 0.3
    fig, axes = plt.subplots(len(layers), len(heads), squeeze=False,
                             figsize=(cell_inches * len(heads) + extra, cell_inches * len(layers) + extra))
    for r, l in enumerate(layers):
        for c, h in enumerate(heads):
            ax = axes[r, c]
            a = att[l, h]
            ax.imshow(a, cmap=cmap, vmin=0.0, vmax=max(float(a.max()), 1e-12), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"head {h}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"layer {l}", fontsize=8)
            if token_labels and c == 0:
                ax.set_yticks(range(T), tokens, fontsize=5)
            if token_labels and r == len(layers) - 1:
                ax.set_xticks(range(T), tokens, fontsize=5, rotation=90)
    note = f" (first {T} tokens)" if capped else ""
    fig.suptitle(f"attention, layers x heads{note}", fontsize=10)
    fig.tight_layout()
    return fig


def head_view_segments(att_layer: np.ndarray, heads, min_weight: float = 0.01, query: int | None = None):
    """Lines of the head view: a list of ``(head, i, j, weight)`` with ``weight >= min_weight``.

    att_layer: (H, T, T). ``query`` keeps only the lines leaving that query token.
    """
    segments = []
    for h in heads:
        rows = range(att_layer.shape[-1]) if query is None else [query]
        for i in rows:
            for j in np.nonzero(att_layer[h, i] >= min_weight)[0]:
                segments.append((h, i, int(j), float(att_layer[h, i, j])))
    return segments


def plot_head_view(attentions, tokens, layer: int = 0, heads=None, batch_index: int = 0,
                   max_tokens: int | None = 64, query: int | None = None, min_weight: float = 0.01,
                   max_linewidth: float = 6.0):
    """One layer as lines between two columns of tokens (bertviz's head view).

    Left column: query tokens ``i``; right column: key tokens ``j``. Head ``h`` draws a line
    ``i -> j`` of width ``max_linewidth * A[h, i, j]`` in its own colour; weights below
    ``min_weight`` are not drawn. ``query`` shows only the lines leaving one token. The figure's
    one axis holds one ``LineCollection`` per head (in ``heads`` order) and ``2 T`` token texts.
    """
    from matplotlib.collections import LineCollection

    att = stack_attentions(attentions, batch_index)
    layer, = _select(layer, att.shape[0], "layer")
    heads = _select(heads, att.shape[1], "head")
    tokens = _check_tokens(tokens, att.shape[-1])
    a, tokens, capped = _cap_tokens(att[layer], tokens, max_tokens)    # (H, T, T)
    T = len(tokens)
    if query is not None:
        query, = _select(query, T, "query token")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, max(2.0, 0.28 * T + 1.0)))
    x_left, x_right = 0.0, 1.0
    for i, tok in enumerate(tokens):
        weight = "bold" if i == query else "normal"
        ax.text(x_left - 0.03, -i, tok, ha="right", va="center", fontsize=9, fontweight=weight)
        ax.text(x_right + 0.03, -i, tok, ha="left", va="center", fontsize=9)
    segments = head_view_segments(a, heads, min_weight, query)
    for h in heads:
        mine = [(i, j, w) for (hh, i, j, w) in segments if hh == h]
        lines = [((x_left, -i), (x_right, -j)) for i, j, _ in mine]
        widths = [max_linewidth * w for _, _, w in mine]
        alphas = [min(1.0, 0.25 + w) for _, _, w in mine]
        color = HEAD_COLORS[h % len(HEAD_COLORS)]
        collection = LineCollection(lines, linewidths=widths, colors=[(*_rgb(color), al) for al in alphas],
                                    label=f"head {h}")
        ax.add_collection(collection)
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylim(-T + 0.3, 1.0)
    ax.axis("off")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=HEAD_COLORS[h % len(HEAD_COLORS)], lw=3, label=f"head {h}") for h in heads]
    ax.legend(handles=handles, loc="upper center", ncol=min(6, len(heads)), fontsize=7, frameon=False,
              bbox_to_anchor=(0.5, 1.02 + 0.04 * ((len(heads) - 1) // 6)))
    note = f" (first {T} tokens)" if capped else ""
    ax.set_title(f"layer {layer}: query (left) -> key (right){note}", fontsize=9, pad=18 + 10 * ((len(heads) - 1) // 6))
    fig.tight_layout()
    return fig


def _rgb(hex_color: str):
    return tuple(int(hex_color[k:k + 2], 16) / 255.0 for k in (1, 3, 5))


def save_figure(fig, path) -> Path:
    """Write a figure to ``path`` (``.png``, ``.svg`` or ``.pdf``, from the suffix); makes the folder."""
    path = Path(path)
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise ValueError(f"cannot save a figure as {path.name!r}: use one of {', '.join(FIGURE_FORMATS)} "
                         "(or attention_html(...) for .html)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


# --------------------------------------------------------------------------------------
# Statistics per head (Clark et al. 2019)
# --------------------------------------------------------------------------------------
def is_punctuation_token(token: str) -> bool:
    """True for a token made only of punctuation (``.``, ``,``, ``'s`` is not; ``##.`` counts)."""
    t = token[2:] if token.startswith("##") else token
    return bool(t) and all(ch in string.punctuation or unicodedata.category(ch).startswith("P") for ch in t)


def head_statistics(attentions, tokens, batch_index: int = 0, cls_token: str = "[CLS]",
                    sep_token: str = "[SEP]", check: bool = True) -> dict[str, np.ndarray]:
    r"""Per-head averages after Clark et al. 2019 ("What does BERT look at?"), each ``(L, H)``.

    With ``A = attentions[l, h]`` (T x T, rows = queries) and the averages over query positions:

    * ``cls``   = mean_i sum_{j: t_j = [CLS]} A[i, j]       (likewise ``sep`` for [SEP])
    * ``punct`` = mean_i sum_{j: t_j punctuation} A[i, j]
    * ``prev``  = mean_{i >= 1} A[i, i-1];   ``next`` = mean_{i <= T-2} A[i, i+1]
    * ``entropy`` = mean_i -sum_j A[i, j] log A[i, j]   (nats; 0 log 0 = 0; ``log T`` = uniform)

    Clark et al. average over many sequences: average the returned arrays yourself (weight by
    length if you like). ``check`` first verifies the rows are distributions
    (:func:`check_attention_probabilities`), which rejects a transposed map.
    """
    att = stack_attentions(attentions, batch_index)                    # (L, H, T, T)
    tokens = _check_tokens(tokens, att.shape[-1])
    if check:
        check_attention_probabilities(att)
    T = att.shape[-1]
    is_cls = np.array([t == cls_token for t in tokens], dtype=att.dtype)           # (T,)
    is_sep = np.array([t == sep_token for t in tokens], dtype=att.dtype)
    is_punct = np.array([is_punctuation_token(t) for t in tokens], dtype=att.dtype)
    stats = {
        "cls": (att @ is_cls).mean(axis=-1),                            # (L, H, T) -> (L, H)
        "sep": (att @ is_sep).mean(axis=-1),
        "punct": (att @ is_punct).mean(axis=-1),
    }
    i = np.arange(T)
    if T > 1:
        stats["prev"] = att[..., i[1:], i[1:] - 1].mean(axis=-1)         # A[i, i-1], i = 1..T-1
        stats["next"] = att[..., i[:-1], i[:-1] + 1].mean(axis=-1)       # A[i, i+1], i = 0..T-2
    else:
        stats["prev"] = stats["next"] = np.zeros(att.shape[:2], att.dtype)
    safe = np.where(att > 0, att, 1.0)                                  # log 1 = 0 where A = 0
    stats["entropy"] = (-(att * np.log(safe)).sum(axis=-1)).mean(axis=-1)
    return stats


def plot_head_statistics(stats: dict[str, np.ndarray], statistics=STATISTICS):
    """One panel per statistic: x = layer, one dot per head, the line = mean over heads."""
    missing = [s for s in statistics if s not in stats]
    if missing:
        raise ValueError(f"statistics {missing} are not in the given dict (keys: {sorted(stats)})")
    plt = _pyplot()
    ncols = 3
    nrows = (len(statistics) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(4.0 * ncols, 3.0 * nrows))
    rng = np.random.default_rng(0)   # horizontal jitter so that heads with equal values stay visible
    for k, name in enumerate(statistics):
        ax = axes.flat[k]
        values = np.asarray(stats[name])                                # (L, H)
        L, H = values.shape
        for l in range(L):
            ax.scatter(l + rng.uniform(-0.15, 0.15, H), values[l], s=12, alpha=0.7, color="#1f77b4")
        ax.plot(range(L), values.mean(axis=1), color="black", lw=1, label="mean over heads")
        ax.set_title(STATISTIC_TITLES.get(name, name), fontsize=9)
        ax.set_xlabel("layer")
        ax.set_xticks(range(L))
    for ax in list(axes.flat)[len(statistics):]:
        fig.delaxes(ax)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# Attention rollout (Abnar & Zuidema 2020)
# --------------------------------------------------------------------------------------
def attention_rollout(attentions, batch_index: int = 0, residual_weight: float = 0.5,
                      head_fusion: str = "mean") -> np.ndarray:
    r"""Attention rollout: how much each token at layer ``l`` draws from each input token.

    Each layer's heads are fused (``mean``, as in the paper, or ``max``), the residual connection
    is added and rows renormalised, then the layers are multiplied from the bottom up:

    .. math::
        \hat A_l = \mathrm{rownorm}\big((1-\alpha)\,\bar A_l + \alpha I\big),\qquad
        R_0 = \hat A_0,\qquad R_l = \hat A_l\, R_{l-1}

    with :math:`\alpha` = ``residual_weight`` (0.5). Returns ``R`` of shape ``(L, T, T)``:
    ``R[-1][i, j]`` is the share of input token ``j`` in the final representation of token ``i``.
    """
    att = stack_attentions(attentions, batch_index)                    # (L, H, T, T)
    if not 0.0 <= residual_weight <= 1.0:
        raise ValueError(f"residual_weight must be in [0, 1]; got {residual_weight}")
    if head_fusion == "mean":
        fused = att.mean(axis=1)                                        # (L, T, T)
    elif head_fusion == "max":
        fused = att.max(axis=1)
    else:
        raise ValueError(f"head_fusion must be 'mean' or 'max'; got {head_fusion!r}")
    L, T = fused.shape[0], fused.shape[-1]
    mixed = (1.0 - residual_weight) * fused + residual_weight * np.eye(T, dtype=fused.dtype)
    mixed /= mixed.sum(axis=-1, keepdims=True)
    rollout = np.empty_like(mixed)                                      # (L, T, T)
    rollout[0] = mixed[0]
    for l in range(1, L):
        rollout[l] = mixed[l] @ rollout[l - 1]
    return rollout


# --------------------------------------------------------------------------------------
# Gradient-based attribution: attention x gradient
# --------------------------------------------------------------------------------------
def attention_attribution(attentions, attention_grads, batch_index: int = 0,
                          normalize: str | None = "model") -> np.ndarray:
    r"""Attention x gradient, per head: ``S[l, h, i, j] = |A[l, h, i, j] * dy/dA[l, h, i, j]|``.

    ``A`` are the attention probabilities and ``dy/dA`` the gradient of a chosen scalar output
    ``y`` (a logit, a loss) with respect to them (the model's ``attention_grads()``). The product
    is the first-order change of ``y`` if the edge ``i -> j`` were removed (``A -> 0``), which
    is why it is a better guide than the raw weight: a large weight whose value the output
    ignores scores zero. Summing ``S`` over ``i, j`` gives a head-importance score (Michel et al.
    2019 use ``|sum A dy/dA|``; integrating along ``alpha A`` gives Hao et al. 2021's attribution).

    ``normalize``: ``None`` -> raw; ``"model"`` (default) -> divided by the sum over all layers,
    heads and pairs (``S.sum() == 1``: each entry is a share of the whole model's attribution);
    ``"layer"`` -> each layer divided by its own sum. Returns ``(L, H, T, T)``.
    """
    att = stack_attentions(attentions, batch_index)                    # (L, H, T, T)
    grads = stack_attentions(attention_grads, batch_index)
    if att.shape != grads.shape:
        raise ValueError(f"attentions {att.shape} and attention_grads {grads.shape} must have the same shape")
    score = np.abs(att * grads)                                        # (L, H, T, T)
    if normalize is None:
        return score
    if normalize == "model":
        total = score.sum()
        return score / total if total > 0 else score
    if normalize == "layer":
        total = score.sum(axis=(1, 2, 3), keepdims=True)                # (L, 1, 1, 1)
        return np.divide(score, total, out=np.zeros_like(score), where=total > 0)
    raise ValueError(f"normalize must be None, 'model' or 'layer'; got {normalize!r}")


def head_importance(attribution: np.ndarray) -> np.ndarray:
    """Sum of an attribution ``(L, H, T, T)`` over token pairs: ``(L, H)`` scores per head."""
    attribution = np.asarray(attribution)
    if attribution.ndim != 4:
        raise ValueError(f"attribution must be (L, H, T, T); got shape {attribution.shape}")
    return attribution.sum(axis=(-1, -2))


def plot_head_importance(importance: np.ndarray, title: str = "attention x gradient, per head"):
    """Heatmap of ``(L, H)`` head scores (layers down, heads across)."""
    importance = np.asarray(importance)
    plt = _pyplot()
    L, H = importance.shape
    fig, ax = plt.subplots(figsize=(0.5 * H + 2.0, 0.45 * L + 1.5))
    image = ax.imshow(importance, cmap="magma", aspect="auto")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


@dataclass
class ModelAttribution:
    """What :func:`model_attention_attribution` returns, for one sequence of the batch."""
    attentions: np.ndarray    # (L, H, T, T) attention probabilities
    gradients: np.ndarray     # (L, H, T, T) dy/dA
    scores: np.ndarray        # (L, H, T, T) |A * dy/dA|, normalised as asked
    value: float              # the output y whose gradient was taken
    target: str               # which output y is, in words


def model_attention_attribution(model, input_ids, token_type_ids=None, attention_mask=None, target: str = "auto",
                                index: int | None = None, position: int | None = None, direction=None,
                                batch_index: int = 0, normalize: str | None = "model") -> ModelAttribution:
    """Forward ``model`` (no dropout), back-propagate one output ``y``, return attention x gradient.

    ``y`` is chosen by ``target``:

    * ``"class"`` (a ``BertForSequenceClassification``): ``logits[batch_index, index]``;
      ``index`` defaults to the predicted class.
    * ``"nsp"`` (``BertForPreTraining``): ``seq_relationship_logits[batch_index, index]``
      (0 = IsNext; default: the predicted one).
    * ``"mlm"`` (``BertForPreTraining``): ``prediction_logits[batch_index, position, index]``, the
      logit of vocabulary id ``index`` (default: the predicted token) at token ``position``.
    * ``"hidden"`` (any of our models, e.g. the encoder-only all-MiniLM-L6-v2):
      ``sum(direction * last_hidden_state[batch_index])`` with ``direction`` of shape (T, H) or
      (H,) (then summed over the real tokens: with the mean-pooled embedding of another sentence
      as ``direction`` this is, up to scale, their similarity).
    * ``"auto"``: ``"class"`` for a classifier, ``"nsp"`` for a pretraining model, else ``"hidden"``.

    The model is switched to the NumPy attention backend for the call (the fused kernels never
    form ``A``, so they keep no ``dy/dA``) and switched back after.
    """
    xp_ids = np.asarray(to_numpy(input_ids))
    if xp_ids.ndim != 2:
        raise ValueError(f"input_ids must be (B, T); got shape {xp_ids.shape}")
    B, T = xp_ids.shape
    if not 0 <= batch_index < B:
        raise ValueError(f"batch_index {batch_index} is out of range for a batch of {B}")
    is_classifier = hasattr(model, "num_labels")
    is_pretraining = hasattr(model, "backward_from") and not is_classifier
    if target == "auto":
        target = "class" if is_classifier else "nsp" if is_pretraining else "hidden"
    if target not in ("class", "nsp", "mlm", "hidden"):
        raise ValueError(f"target must be 'auto', 'class', 'nsp', 'mlm' or 'hidden'; got {target!r}")
    if (target == "class" and not is_classifier) or (target in ("nsp", "mlm") and not is_pretraining):
        raise ValueError(f"target {target!r} does not fit a {type(model).__name__}: use 'class' with a "
                         "BertForSequenceClassification, 'nsp' or 'mlm' with a BertForPreTraining, 'hidden' with any")
    if target == "hidden" and is_classifier:
        raise ValueError("target 'hidden' needs a BertModel or BertForPreTraining (a classifier's backward "
                         "starts at its logits)")
    if target == "hidden" and direction is None:
        raise ValueError("target 'hidden' needs direction: an array (T, H) or (H,)")
    saved_backend = model.config.attention_backend
    model.config.attention_backend = "numpy"
    try:
        out = model.forward(input_ids, token_type_ids, attention_mask, training=False, output_attentions=True,
                            output_hidden_states=target == "hidden")
        if target == "hidden":
            last = out.hidden_states[-1]                                            # (B, T, H)
            H = last.shape[-1]
            u = np.asarray(to_numpy(direction), dtype=np.float64)
            if u.shape == (H,):
                real = np.ones(T) if attention_mask is None else np.asarray(to_numpy(attention_mask))[batch_index]
                u = real[:, None] * u[None, :]                                      # (T, H): real tokens only
            if u.shape != (T, H):
                raise ValueError(f"direction must have shape ({T}, {H}) or ({H},); got {u.shape}")
            d = model.xp.zeros(last.shape, dtype=last.dtype)
            d[batch_index] = model.xp.asarray(u.astype(last.dtype))
            value = float((to_numpy(last[batch_index]).astype(np.float64) * u).sum())
            what = "direction . last hidden state"
            if is_pretraining:
                model.backward_from(d_last_hidden_state=d)
            else:
                model.backward(d_last_hidden_state=d)
        elif target == "mlm":
            if position is None or not 0 <= position < T:
                raise ValueError(f"target 'mlm' needs position in 0..{T - 1}; got {position}")
            logits = out.prediction_logits                                          # (B, T, V)
            row = to_numpy(logits[batch_index, position])
            index = int(np.argmax(row)) if index is None else index
            if not 0 <= index < row.shape[0]:
                raise ValueError(f"vocabulary id {index} is out of range 0..{row.shape[0] - 1}")
            d = model.xp.zeros_like(logits)
            d[batch_index, position, index] = 1.0
            value, what = float(row[index]), f"MLM logit of id {index} at position {position}"
            model.backward_from(d_prediction_logits=d)
        else:
            logits = out.logits if target == "class" else out.seq_relationship_logits  # (B, C)
            row = to_numpy(logits[batch_index])
            index = int(np.argmax(row)) if index is None else index
            if not 0 <= index < row.shape[0]:
                raise ValueError(f"{target} output {index} is out of range 0..{row.shape[0] - 1}")
            d = model.xp.zeros_like(logits)
            d[batch_index, index] = 1.0
            value = float(row[index])
            if target == "class":
                what = f"class logit {index}"
                model.backward_from(d)
            else:
                what = f"next-sentence logit {index}"
                model.backward_from(d_seq_relationship_logits=d)
        grads = model.attention_grads()
    finally:
        model.config.attention_backend = saved_backend
    attentions = stack_attentions(out.attentions, batch_index)
    gradients = stack_attentions(grads, batch_index)
    return ModelAttribution(attentions, gradients, attention_attribution(attentions, gradients, normalize=normalize),
                            value, what)


# --------------------------------------------------------------------------------------
# Self-contained HTML (head view and model view)
# --------------------------------------------------------------------------------------
_HTML_STYLE = """
#{uid} {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; font-size: 12px; color: #222; }}
#{uid} .bfs-controls {{ margin: 4px 0 6px 0; }}
#{uid} .bfs-controls label {{ margin-right: 8px; white-space: nowrap; cursor: pointer; }}
#{uid} .bfs-controls select, #{uid} .bfs-controls button {{ font-size: 12px; margin-right: 10px; }}
#{uid} .bfs-note {{ color: #777; font-size: 11px; }}
#{uid} svg text {{ font-size: 12px; }}
#{uid} svg .bfs-tok {{ cursor: pointer; }}
#{uid} svg .bfs-cell {{ cursor: pointer; }}
"""

# The renderer in the page. It mirrors _head_view_svg / _model_view_svg below (same layout), so
# the picture Python drew first and the ones the script draws after a click look the same.
_HTML_SCRIPT = r"""
(function () {
  var D = %(data)s;
  var root = document.getElementById(%(uid_json)s);
  if (!root) { return; }
  var box = root.querySelector(".bfs-svg"), controls = root.querySelector(".bfs-controls");
  var S = {view: D.view, layer: D.layer, heads: D.heads.map(function () { return true; }), focus: null, side: null};
  function esc(s) { return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;"); }
  function color(h) { return D.colors[h %% D.colors.length]; }
  function headView() {
    var T = D.tokens.length, G = D.geometry, A = D.attn[S.layer], parts = [];
    var xl = G.text_width, xr = G.text_width + G.gap, h0 = G.top;
    var W = 2 * G.text_width + G.gap, Hpx = h0 + T * G.row + 4;
    for (var k = 0; k < D.heads.length; k++) {
      if (!S.heads[k]) { continue; }
      for (var i = 0; i < T; i++) {
        for (var j = 0; j < T; j++) {
          var w = A[k][i][j];
          if (w < D.min_weight) { continue; }
          if (S.focus !== null && ((S.side === "q" && i !== S.focus) || (S.side === "k" && j !== S.focus))) { continue; }
          parts.push('<line x1="' + (xl + 4) + '" y1="' + (h0 + i * G.row + G.row / 2) + '" x2="' + (xr - 4) +
                     '" y2="' + (h0 + j * G.row + G.row / 2) + '" stroke="' + color(D.heads[k]) +
                     '" stroke-width="' + (G.max_linewidth * w).toFixed(2) + '" stroke-opacity="' +
                     Math.min(1, 0.25 + w).toFixed(2) + '"></line>');
        }
      }
    }
    for (var t = 0; t < T; t++) {
      var y = h0 + t * G.row + G.row / 2 + 4;
      var bq = (S.side === "q" && S.focus === t) ? ' font-weight="bold"' : '';
      var bk = (S.side === "k" && S.focus === t) ? ' font-weight="bold"' : '';
      parts.push('<text class="bfs-tok" data-side="q" data-i="' + t + '" x="' + xl + '" y="' + y +
                 '" text-anchor="end"' + bq + '>' + esc(D.tokens[t]) + '</text>');
      parts.push('<text class="bfs-tok" data-side="k" data-i="' + t + '" x="' + xr + '" y="' + y +
                 '" text-anchor="start"' + bk + '>' + esc(D.tokens[t]) + '</text>');
    }
    parts.push('<text x="' + (W / 2) + '" y="12" text-anchor="middle" fill="#555">layer ' + D.layers[S.layer] +
               ': query \u2192 key</text>');
    return '<svg width="' + W + '" height="' + Hpx + '" viewBox="0 0 ' + W + ' ' + Hpx + '">' + parts.join("") + '</svg>';
  }
  function modelView() {
    var T = D.tokens.length, G = D.geometry, c = G.cell, pad = G.cell_pad, px = c / T, parts = [];
    var W = G.label + D.heads.length * (c + pad), Hpx = G.top + D.layers.length * (c + pad);
    for (var k = 0; k < D.heads.length; k++) {
      parts.push('<text x="' + (G.label + k * (c + pad) + c / 2) + '" y="' + (G.top - 4) +
                 '" text-anchor="middle" fill="#555">head ' + D.heads[k] + '</text>');
    }
    for (var l = 0; l < D.layers.length; l++) {
      var y0 = G.top + l * (c + pad);
      parts.push('<text x="' + (G.label - 6) + '" y="' + (y0 + c / 2 + 4) + '" text-anchor="end" fill="#555">layer ' +
                 D.layers[l] + '</text>');
      for (var k2 = 0; k2 < D.heads.length; k2++) {
        var x0 = G.label + k2 * (c + pad), A = D.attn[l][k2], m = 1e-12;
        for (var i = 0; i < T; i++) { for (var j = 0; j < T; j++) { if (A[i][j] > m) { m = A[i][j]; } } }
        parts.push('<g class="bfs-cell" data-l="' + l + '" data-k="' + k2 + '"><title>layer ' + D.layers[l] +
                   ', head ' + D.heads[k2] + ' (click: head view)</title><rect x="' + x0 + '" y="' + y0 + '" width="' + c +
                   '" height="' + c + '" fill="#fff" stroke="#ccc"></rect>');
        for (var i2 = 0; i2 < T; i2++) {
          for (var j2 = 0; j2 < T; j2++) {
            var o = A[i2][j2] / m;
            if (o < 0.02) { continue; }
            parts.push('<rect x="' + (x0 + j2 * px).toFixed(2) + '" y="' + (y0 + i2 * px).toFixed(2) + '" width="' +
                       px.toFixed(2) + '" height="' + px.toFixed(2) + '" fill="#08519c" fill-opacity="' + o.toFixed(2) + '"></rect>');
          }
        }
        parts.push('</g>');
      }
    }
    return '<svg width="' + W + '" height="' + Hpx + '" viewBox="0 0 ' + W + ' ' + Hpx + '">' + parts.join("") + '</svg>';
  }
  function buildControls() {
    var html = '<select class="bfs-view"><option value="head">head view</option><option value="model">model view</option></select>';
    html += '<select class="bfs-layer">';
    for (var l = 0; l < D.layers.length; l++) { html += '<option value="' + l + '">layer ' + D.layers[l] + '</option>'; }
    html += '</select>';
    for (var k = 0; k < D.heads.length; k++) {
      html += '<label style="color:' + color(D.heads[k]) + '"><input type="checkbox" class="bfs-head" data-k="' + k +
              '" checked> head ' + D.heads[k] + '</label>';
    }
    controls.innerHTML = html;
    controls.querySelector(".bfs-view").value = S.view;
    controls.querySelector(".bfs-layer").value = String(S.layer);
    controls.querySelector(".bfs-view").onchange = function (e) { S.view = e.target.value; render(); };
    controls.querySelector(".bfs-layer").onchange = function (e) { S.layer = parseInt(e.target.value, 10); render(); };
    var boxes = controls.querySelectorAll(".bfs-head");
    for (var b = 0; b < boxes.length; b++) {
      boxes[b].onchange = function (e) { S.heads[parseInt(e.target.getAttribute("data-k"), 10)] = e.target.checked; render(); };
    }
  }
  function render() {
    var headMode = S.view === "head";
    controls.querySelector(".bfs-layer").style.display = headMode ? "" : "none";
    var labels = controls.querySelectorAll("label");
    for (var b = 0; b < labels.length; b++) { labels[b].style.display = headMode ? "" : "none"; }
    box.innerHTML = headMode ? headView() : modelView();
    if (headMode) {
      var toks = box.querySelectorAll(".bfs-tok");
      for (var t = 0; t < toks.length; t++) {
        toks[t].onmouseenter = function (e) {
          S.focus = parseInt(e.target.getAttribute("data-i"), 10); S.side = e.target.getAttribute("data-side"); render(); };
      }
      box.querySelector("svg").onmouseleave = function () { if (S.focus !== null) { S.focus = null; S.side = null; render(); } };
    } else {
      var cells = box.querySelectorAll(".bfs-cell");
      for (var c = 0; c < cells.length; c++) {
        cells[c].onclick = function () {
          S.layer = parseInt(this.getAttribute("data-l"), 10);
          var k = parseInt(this.getAttribute("data-k"), 10);
          S.heads = D.heads.map(function (_, i) { return i === k; });
          S.view = "head"; buildControls(); render();
        };
      }
    }
  }
  buildControls();
  render();
})();
"""

#: layout of the SVG pictures, shared by the Python and the JavaScript renderers (pixels)
_GEOMETRY = {"row": 20, "gap": 160, "top": 20, "max_linewidth": 5.0, "cell": 90, "cell_pad": 10, "label": 60}


def _head_view_svg(data: dict) -> str:
    """The head view of ``data["layer"]`` with all heads, as the script's ``headView()`` draws it."""
    G, tokens = data["geometry"], data["tokens"]
    T = len(tokens)
    A = data["attn"][data["layer"]]                                     # [H][T][T]
    xl, xr, top = G["text_width"], G["text_width"] + G["gap"], G["top"]
    width, height = 2 * G["text_width"] + G["gap"], top + T * G["row"] + 4
    parts = []
    for k, h in enumerate(data["heads"]):
        for i in range(T):
            for j in range(T):
                w = A[k][i][j]
                if w < data["min_weight"]:
                    continue
                parts.append(f'<line x1="{xl + 4}" y1="{top + i * G["row"] + G["row"] / 2:g}" x2="{xr - 4}" '
                             f'y2="{top + j * G["row"] + G["row"] / 2:g}" stroke="{HEAD_COLORS[h % len(HEAD_COLORS)]}" '
                             f'stroke-width="{G["max_linewidth"] * w:.2f}" stroke-opacity="{min(1.0, 0.25 + w):.2f}">'
                             '</line>')
    for t, tok in enumerate(tokens):
        y = top + t * G["row"] + G["row"] / 2 + 4
        parts.append(f'<text class="bfs-tok" x="{xl}" y="{y:g}" text-anchor="end">{html.escape(tok)}</text>')
        parts.append(f'<text class="bfs-tok" x="{xr}" y="{y:g}" text-anchor="start">{html.escape(tok)}</text>')
    parts.append(f'<text x="{width / 2:g}" y="12" text-anchor="middle" fill="#555">layer '
                 f'{data["layers"][data["layer"]]}: query \u2192 key</text>')
    return f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}">{"".join(parts)}</svg>'


def _model_view_svg(data: dict) -> str:
    """The layers x heads grid, as the script's ``modelView()`` draws it."""
    G, T = data["geometry"], len(data["tokens"])
    c, pad = G["cell"], G["cell_pad"]
    px = c / T
    width = G["label"] + len(data["heads"]) * (c + pad)
    height = G["top"] + len(data["layers"]) * (c + pad)
    parts = [f'<text x="{G["label"] + k * (c + pad) + c / 2:g}" y="{G["top"] - 4}" text-anchor="middle" '
             f'fill="#555">head {h}</text>' for k, h in enumerate(data["heads"])]
    for l, layer in enumerate(data["layers"]):
        y0 = G["top"] + l * (c + pad)
        parts.append(f'<text x="{G["label"] - 6}" y="{y0 + c / 2 + 4:g}" text-anchor="end" fill="#555">'
                     f'layer {layer}</text>')
        for k, h in enumerate(data["heads"]):
            x0 = G["label"] + k * (c + pad)
            A = np.asarray(data["attn"][l][k])
            m = max(float(A.max()), 1e-12)
            parts.append(f'<g class="bfs-cell" data-l="{l}" data-k="{k}"><title>layer {layer}, head {h} '
                         f'(click: head view)</title><rect x="{x0}" y="{y0}" width="{c}" height="{c}" fill="#fff" '
                         'stroke="#ccc"></rect>')
            for i in range(T):
                for j in range(T):
                    o = A[i, j] / m
                    if o < 0.02:
                        continue
                    parts.append(f'<rect x="{x0 + j * px:.2f}" y="{y0 + i * px:.2f}" width="{px:.2f}" '
                                 f'height="{px:.2f}" fill="#08519c" fill-opacity="{o:.2f}"></rect>')
            parts.append("</g>")
    return f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}">{"".join(parts)}</svg>'


def _json_for_script(obj) -> str:
    """JSON that is safe inside ``<script>``: no ``</script>``, no ``<!--``, no U+2028/9 line breaks."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def attention_html(attentions, tokens, view: str = "head", layer: int = 0, layers=None, heads=None,
                   batch_index: int = 0, max_tokens: int | None = 96, min_weight: float = 0.01,
                   decimals: int = 4, title: str | None = None) -> str:
    """The head view and model view as one self-contained HTML *fragment* (a ``<div>``).

    Paste it into a page, return it from ``_repr_html_`` (see :func:`show_attention`), or write a
    whole page with :func:`save_attention_html`. It loads nothing: the weights (rounded to
    ``decimals``) are a JSON literal inside an inline script that draws SVG; the first picture
    (``view`` = ``"head"`` for ``layer``, or ``"model"``) is already in the markup as static SVG, so
    something shows even where scripts are blocked. Interaction: switch view and layer, toggle
    heads, hover a token to see only its lines, click a model-view cell to open that head.
    Element ids are unique per call, so several views can live in one notebook.
    """
    if view not in ("head", "model"):
        raise ValueError(f"view must be 'head' or 'model'; got {view!r}")
    att = stack_attentions(attentions, batch_index)
    layers = _select(layers, att.shape[0], "layer")
    heads = _select(heads, att.shape[1], "head")
    layer, = _select(layer, att.shape[0], "layer")
    if layer not in layers:
        raise ValueError(f"layer {layer} is not among the selected layers {layers}")
    tokens = _check_tokens(tokens, att.shape[-1])
    att, tokens, capped = _cap_tokens(att, tokens, max_tokens)
    chosen = att[np.ix_(layers, heads)]                                # (len(layers), len(heads), T, T)
    text_width = 14 + 7 * max(len(t) for t in tokens)
    data = {"tokens": tokens, "layers": layers, "heads": heads, "layer": layers.index(layer), "view": view,
            "attn": np.round(chosen.astype(np.float64), decimals).tolist(), "min_weight": min_weight,
            "colors": list(HEAD_COLORS), "geometry": dict(_GEOMETRY, text_width=text_width)}
    uid = f"bfs-att-{uuid.uuid4().hex[:12]}"
    first = _head_view_svg(data) if view == "head" else _model_view_svg(data)
    note = f"first {len(tokens)} tokens shown. " if capped else ""
    heading = f'<div><b>{html.escape(title)}</b></div>' if title else ""
    return (f'<div id="{uid}" class="bfs-attention">'
            f'<style>{_HTML_STYLE.format(uid=uid)}</style>{heading}'
            '<div class="bfs-controls"></div>'
            f'<div class="bfs-svg">{first}</div>'
            f'<div class="bfs-note">{note}Static picture; with scripts allowed (a trusted notebook, a browser), '
            'switch views, layers and heads, and hover tokens.</div>'
            f'<script>{_HTML_SCRIPT % {"data": _json_for_script(data), "uid_json": json.dumps(uid)}}</script>'
            '</div>')


def save_attention_html(path, attentions, tokens, **kwargs) -> Path:
    """Write :func:`attention_html` as a complete page (UTF-8) to ``path``; returns the path."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"an HTML view must be saved as .html; got {path.name!r}")
    fragment = attention_html(attentions, tokens, **kwargs)
    title = html.escape(kwargs.get("title") or "attention")
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>{title}</title></head>\n<body>\n{fragment}\n</body></html>\n')
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


class AttentionView:
    """Displays itself in Jupyter (``_repr_html_``); ``.html`` is the fragment, ``.save(path)`` a page."""

    def __init__(self, attentions, tokens, **kwargs):
        self._args = (attentions, tokens)
        self._kwargs = kwargs
        self.html = attention_html(attentions, tokens, **kwargs)

    def _repr_html_(self) -> str:
        return self.html

    def save(self, path) -> Path:
        return save_attention_html(path, *self._args, **self._kwargs)


def show_attention(attentions, tokens, **kwargs) -> AttentionView:
    """The notebook entry point: the last line of a cell ``show_attention(out.attentions, tokens)``
    renders the interactive view (JupyterLab, classic Notebook, VS Code). Same arguments as
    :func:`attention_html`."""
    return AttentionView(attentions, tokens, **kwargs)


# --------------------------------------------------------------------------------------
# Command line: bert-from-scratch attention "The cat sat on the mat." --layer 2 --out att.png
# --------------------------------------------------------------------------------------
CLI_VIEWS = ("auto", "heatmap", "head", "model", "stats", "rollout")


def add_attention_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of the ``attention`` subcommand (the lead's CLI calls :func:`cli_attention`)."""
    parser.add_argument("text", help="the sentence to look at")
    parser.add_argument("--pair", default=None, metavar="TEXT", help="a second sentence (segment B)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2",
                        help="a known model name (all-MiniLM-L6-v2) or a checkpoint folder (default: %(default)s)")
    parser.add_argument("--layer", type=int, default=None, help="layer, counted from 0 (-1 = the last)")
    parser.add_argument("--head", type=int, default=None, help="head, counted from 0 (with --layer: one heatmap)")
    parser.add_argument("--view", choices=CLI_VIEWS, default="auto",
                        help="auto: heatmap with --layer and --head, head view with --layer, else model view")
    parser.add_argument("--out", default=None, metavar="FILE", help="write the figure (.png, .svg or .pdf)")
    parser.add_argument("--html", default=None, metavar="FILE", help="write the interactive view (.html)")
    parser.add_argument("--max-tokens", type=int, default=64, help="draw at most this many tokens (default 64)")
    parser.add_argument("--max-length", type=int, default=128, help="truncate the input to this many tokens")
    return parser


def _cli_view(args) -> str:
    if args.view != "auto":
        return args.view
    if args.layer is not None and args.head is not None:
        return "heatmap"
    return "head" if args.layer is not None else "model"


def cli_attention(args) -> int:
    """Draw the attention of ``args.model`` on ``args.text``; 0 on success, 2 on a user error."""
    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    if not args.out and not args.html:
        return fail("nothing to write: give --out FILE.png (or .svg/.pdf) and/or --html FILE.html")
    if args.out and Path(args.out).suffix.lower() not in FIGURE_FORMATS:
        return fail(f"--out {args.out}: the figure format must be one of {', '.join(FIGURE_FORMATS)}")
    if args.html and Path(args.html).suffix.lower() not in (".html", ".htm"):
        return fail(f"--html {args.html}: the file name must end in .html")
    if args.max_tokens is not None and args.max_tokens < 1:
        return fail(f"--max-tokens must be at least 1; got {args.max_tokens}")
    if not args.text.strip():
        return fail("the text is empty")
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .fetch import FetchError
    from .model import BertModel
    from .pretrained import PretrainedError, pretrained

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*of another head")   # a checkpoint's MLM/NSP heads
            model, tokenizer = pretrained(args.model, model_class=BertModel)
    except (PretrainedError, CheckpointError, ConfigError, FetchError, FileNotFoundError, ValueError) as e:
        return fail(str(e).splitlines()[0])
    try:
        enc = tokenizer.encode(args.text, args.pair, max_length=args.max_length)
    except ValueError as e:
        return fail(str(e).splitlines()[0])
    ids = np.asarray([enc.input_ids])                                   # (1, T)
    types = np.asarray([enc.token_type_ids])                            # (1, T)
    out = model.forward(ids, types, output_attentions=True)
    att = stack_attentions(out.attentions)                              # (L, H, T, T)
    tokens = list(enc.tokens)
    L, H = att.shape[:2]
    view = _cli_view(args)
    try:
        layer, = _select(args.layer if args.layer is not None else 0, L, "layer")
        if args.head is not None:
            _select(args.head, H, "head")
        if args.out:
            if view == "heatmap":
                fig = plot_attention_heatmap(att, tokens, layer, args.head if args.head is not None else 0,
                                             max_tokens=args.max_tokens)
            elif view == "head":
                fig = plot_head_view(att, tokens, layer, heads=args.head, max_tokens=args.max_tokens)
            elif view == "model":
                fig = plot_model_view(att, tokens, layers=args.layer, heads=args.head,
                                      max_tokens=min(args.max_tokens, 48))
            elif view == "stats":
                fig = plot_head_statistics(head_statistics(att, tokens))
            else:  # rollout
                rollout = attention_rollout(att)                         # (L, T, T)
                fig = plot_attention_heatmap(rollout[layer], tokens, max_tokens=args.max_tokens,
                                             title=f"attention rollout up to layer {layer}")
            save_figure(fig, args.out)
            print(f"wrote {args.out}")
        if args.html:
            html_view = "model" if view == "model" else "head"
            save_attention_html(args.html, att, tokens, view=html_view, layer=layer, max_tokens=args.max_tokens,
                                title=f"{args.model}: {args.text}")
            print(f"wrote {args.html}")
    except (ValueError, OSError) as e:
        return fail(str(e).splitlines()[0])
    return 0
