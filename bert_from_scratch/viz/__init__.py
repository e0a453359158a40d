r"""Looking inside attention: heatmaps, head and model views, head statistics, rollout, attribution.

Everything here takes plain NumPy arrays (CuPy arrays are copied to the host) and returns
matplotlib figures or HTML text; only :func:`model_attention_attribution` needs a model.
An *attention tensor* is ``A[l, h, i, j]``, query ``i`` -> key ``j``, rows summing to 1
(a model's ``out.attentions`` or a stacked ``(L, H, T, T)`` array).

The modules, all re-exported here:

* :mod:`.inputs` -- :func:`stack_attentions`, :func:`check_attention_probabilities`.
* :mod:`.heatmaps` -- :func:`plot_attention_heatmap`, :func:`plot_model_view`, :func:`plot_head_view`.
* :mod:`.html` -- :func:`attention_html`, :func:`save_attention_html`, :func:`show_attention`: the
  head and model views as self-contained HTML.
* :mod:`.analysis` -- :func:`head_statistics` (Clark et al. 2019), :func:`attention_rollout`
  (Abnar & Zuidema 2020).
* :mod:`.attribution` -- attention x gradient: :func:`attention_attribution`, :func:`head_importance`,
  :func:`model_attention_attribution`.
* :mod:`.figures` -- :func:`save_figure` (atomic), :func:`plot_training_curves`,
  :func:`plot_confusion_matrix`.

The ``attention`` subcommand that draws these lives in :mod:`bert_from_scratch.cli.attention`.
"""
from .analysis import (STATISTIC_TITLES, STATISTICS, attention_rollout, head_statistics, is_punctuation_token,
                       plot_head_statistics)
from .attribution import (ModelAttribution, attention_attribution, head_importance, model_attention_attribution,
                          plot_head_importance)
from .figures import FIGURE_FORMATS, plot_confusion_matrix, plot_training_curves, save_figure
from .heatmaps import HEAD_COLORS, head_view_segments, plot_attention_heatmap, plot_head_view, plot_model_view
from .html import AttentionView, attention_html, save_attention_html, show_attention
from .inputs import check_attention_probabilities, stack_attentions

__all__ = [
    "STATISTICS", "STATISTIC_TITLES", "attention_rollout", "head_statistics", "is_punctuation_token",
    "plot_head_statistics", "ModelAttribution", "attention_attribution", "head_importance",
    "model_attention_attribution", "plot_head_importance", "FIGURE_FORMATS", "plot_confusion_matrix",
    "plot_training_curves", "save_figure", "HEAD_COLORS", "head_view_segments", "plot_attention_heatmap",
    "plot_head_view", "plot_model_view", "AttentionView", "attention_html", "save_attention_html",
    "show_attention", "check_attention_probabilities", "stack_attentions",
]

