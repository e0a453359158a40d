"""What attention looks at, from the attention weights alone: statistics per head, rollout.

* :func:`head_statistics`, :func:`plot_head_statistics` -- Clark et al. 2019, "What does BERT look at?".
* :func:`attention_rollout` -- Abnar & Zuidema 2020, "Quantifying attention flow in transformers".
"""
from __future__ import annotations

import string
import unicodedata

import numpy as np

from .heatmaps import _pyplot
from .inputs import _check_tokens, check_attention_probabilities, stack_attentions

#: the statistics of :func:`head_statistics`, in plotting order
STATISTICS = ("cls", "sep", "punct", "prev", "next", "entropy")
STATISTIC_TITLES = {"cls": "attention to [CLS]", "sep": "attention to [SEP]", "punct": "attention to punctuation",
                    "prev": "attention to previous token", "next": "attention to next token",
                    "entropy": "attention entropy (nats)"}


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
