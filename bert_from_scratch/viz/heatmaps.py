"""Attention as matplotlib figures: one head's heatmap, the layers x heads grid, the head view.

* :func:`plot_attention_heatmap` -- one layer/head (or any ``T x T`` map) with token labels.
* :func:`plot_model_view` -- the layers x heads grid of small heatmaps.
* :func:`plot_head_view` -- one layer, lines from each query token to each key token, width = weight.

Each returns a pyplot figure (close it with ``plt.close(fig)``; write it with
:func:`~bert_from_scratch.viz.figures.save_figure`).
"""
from __future__ import annotations

import numpy as np

from .inputs import _cap_tokens, _check_tokens, _select, stack_attentions

#: colours of heads 0, 1, 2, ... in the head view (matplotlib's tab10 followed by two more)
HEAD_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
               "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939")


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
