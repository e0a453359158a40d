"""The head view and model view as self-contained HTML, for notebooks and browsers.

* :func:`attention_html`, :func:`save_attention_html`, :func:`show_attention` -- the weights as JSON
  in an inline script, no CDN, no network. The first picture is drawn by Python as inline SVG, so
  it shows even where scripts do not run (an untrusted notebook, a static HTML viewer); the
  inline script only adds the interaction.

The script and its style sheet are package data (``static/attention_view.js`` and
``static/attention_view.css``), inlined into every fragment; ``__BFS_UID__`` in them stands for the
fragment's element id and ``__BFS_DATA__`` for the weights.
"""
from __future__ import annotations

import functools
import html
import json
import uuid
from importlib import resources
from pathlib import Path

import numpy as np

from ..files import atomic_write
from .heatmaps import HEAD_COLORS
from .inputs import _cap_tokens, _check_tokens, _select, stack_attentions


@functools.lru_cache(maxsize=None)
def _static(name: str) -> str:
    """The text of ``static/<name>``, a data file of this package."""
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def _inline_style(uid: str) -> str:
    """The style sheet, scoped to the element ``#uid``."""
    return "\n" + _static("attention_view.css").replace("__BFS_UID__", uid)


# static/attention_view.js is the renderer in the page. It mirrors _head_view_svg / _model_view_svg
# below (same layout), so the picture Python drew first and the ones the script draws after a click
# look the same.
def _inline_script(uid: str, data: dict) -> str:
    """The script, bound to the element ``uid`` and holding ``data`` (inserted last, so never rescanned)."""
    script = _static("attention_view.js").replace("__BFS_UID__", json.dumps(uid))
    return "\n" + script.replace("__BFS_DATA__", _json_for_script(data), 1)


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
            f'<style>{_inline_style(uid)}</style>{heading}'
            '<div class="bfs-controls"></div>'
            f'<div class="bfs-svg">{first}</div>'
            f'<div class="bfs-note">{note}Static picture; with scripts allowed (a trusted notebook, a browser), '
            'switch views, layers and heads, and hover tokens.</div>'
            f'<script>{_inline_script(uid, data)}</script>'
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
    return atomic_write(path, page)


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
