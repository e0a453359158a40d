"""Writing figures, and the two figures of the training runs.

* :func:`save_figure` -- a matplotlib figure to ``.png``, ``.svg`` or ``.pdf``, atomically (through
  :func:`bert_from_scratch.files.atomic_path`: a killed run never leaves half a picture).
* :func:`plot_training_curves` -- pretraining loss and MLM/NSP accuracy per step.
* :func:`plot_confusion_matrix` -- a fine-tuned classifier's confusion matrix.

The training figures draw on matplotlib's Agg canvas directly (no pyplot), so importing or
calling them never changes the backend of a notebook.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..files import atomic_path

#: figure formats :func:`save_figure` writes
FIGURE_FORMATS = (".png", ".svg", ".pdf")

#: resolution of the training figures (the attention figures use save_figure's 150)
TRAINING_DPI = 110


def save_figure(fig, path, dpi: int = 150, bbox_inches: str | None = "tight") -> Path:
    """Write a figure to ``path`` (``.png``, ``.svg`` or ``.pdf``, from the suffix); makes the folder.

    The file appears whole or not at all: matplotlib writes a temporary file next to ``path``,
    renamed onto it when done. ``bbox_inches=None`` keeps the figure's own size."""
    path = Path(path)
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise ValueError(f"cannot save a figure as {path.name!r}: use one of {', '.join(FIGURE_FORMATS)} "
                         "(or attention_html(...) for .html)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:      # the temporary name has no suffix: name the format
        fig.savefig(tmp, format=path.suffix[1:].lower(), dpi=dpi, bbox_inches=bbox_inches)
    return path


def _moving_average(values, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each step (of fewer at the start); ``(N,)`` in, ``(N,)`` out."""
    v = np.asarray(values, dtype=np.float64)                   # (N,)
    if len(v) < window or window <= 1:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    head = c[1:window] / np.arange(1, window)                  # growing window at the start
    return np.concatenate([head, (c[window:] - c[:-window]) / window])


def plot_training_curves(history: dict, path) -> Path:
    """Loss (left) and MLM/NSP accuracy (right) per step, eval points on top; saved as PNG.

    Uses matplotlib's Agg canvas directly (no pyplot), so it never changes the backend of a
    notebook that imports this module.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = np.arange(1, len(history["loss"]) + 1)             # (N,) 1-based step numbers
    window = max(1, len(steps) // 50)
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(steps, history["loss"], color="tab:blue", alpha=0.3, lw=0.8, label="train (per step)")
    ax_loss.plot(steps, _moving_average(history["loss"], window), color="tab:blue", lw=1.5,
                 label=f"train (mean of {window})")
    ax_acc.plot(steps, _moving_average(history["mlm_accuracy"], window), color="tab:orange", label="train MLM")
    ax_acc.plot(steps, _moving_average(history["nsp_accuracy"], window), color="tab:green", label="train NSP")
    if history["evals"]:
        ev_steps = [e["step"] for e in history["evals"]]
        ax_loss.plot(ev_steps, [e["loss"] for e in history["evals"]], "o-", color="tab:red", ms=4, label="eval")
        ax_acc.plot(ev_steps, [e["mlm_accuracy"] for e in history["evals"]], "o--", color="tab:orange", ms=4,
                    label="eval MLM")
        ax_acc.plot(ev_steps, [e["nsp_accuracy"] for e in history["evals"]], "s--", color="tab:green", ms=4,
                    label="eval NSP")
    ax_loss.set(xlabel="step", ylabel="loss (MLM + NSP)", title="Pretraining loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="MLM and NSP accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=TRAINING_DPI, bbox_inches=None)


def plot_confusion_matrix(cm: np.ndarray, label_names: Sequence[str], path, title: str = "") -> Path:
    """Counts (and row percentages) as a heat map: rows true class, columns predicted; saved as PNG.

    Uses matplotlib's Agg canvas directly (no pyplot), as :func:`plot_training_curves` does.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)                                                 # (K, K) counts: rows true, columns predicted
    K = len(label_names)
    if cm.shape != (K, K):
        raise ValueError(f"confusion matrix has shape {cm.shape}; expected ({K}, {K}) for {K} label names")
    row_share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)      # (K, K) fraction of each true class
    size = 2.5 + 0.9 * K
    fig = Figure(figsize=(size + 1.2, size))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(row_share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    for i in range(K):
        for j in range(K):
            ax.text(j, i, f"{cm[i, j]}\n{100 * row_share[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                    color="white" if row_share[i, j] > 0.5 else "black")
    ax.set_xticks(range(K), [str(n) for n in label_names], rotation=30, ha="right")
    ax.set_yticks(range(K), [str(n) for n in label_names])
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=TRAINING_DPI, bbox_inches=None)
