"""Gradient-based attribution: attention x gradient, per edge and per head.

* :func:`attention_attribution` -- ``|A * dy/dA|`` from attentions and their gradients.
* :func:`head_importance`, :func:`plot_head_importance` -- the same summed over token pairs, per head.
* :func:`model_attention_attribution` -- forward and backward a model and return all of the above
  (Michel et al. 2019; Hao et al. 2021 integrate the same product along a path).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..nn.xp import to_numpy
from .heatmaps import _pyplot
from .inputs import stack_attentions


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

    The call runs on ``model.with_backend("numpy")``, a copy on the NumPy attention backend that
    shares the parameters (the fused kernels never form ``A``, so they keep no ``dy/dA``); ``model``
    itself is left as it was.
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
    reference = model.with_backend("numpy")   # same parameters; the fused kernels never form A
    out = reference.forward(input_ids, token_type_ids, attention_mask, training=False, output_attentions=True,
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
        d = reference.xp.zeros(last.shape, dtype=last.dtype)
        d[batch_index] = reference.xp.asarray(u.astype(last.dtype))
        value = float((to_numpy(last[batch_index]).astype(np.float64) * u).sum())
        what = "direction . last hidden state"
        if is_pretraining:
            reference.backward_from(d_last_hidden_state=d)
        else:
            reference.backward(d_last_hidden_state=d)
    elif target == "mlm":
        if position is None or not 0 <= position < T:
            raise ValueError(f"target 'mlm' needs position in 0..{T - 1}; got {position}")
        logits = out.prediction_logits                                          # (B, T, V)
        row = to_numpy(logits[batch_index, position])
        index = int(np.argmax(row)) if index is None else index
        if not 0 <= index < row.shape[0]:
            raise ValueError(f"vocabulary id {index} is out of range 0..{row.shape[0] - 1}")
        d = reference.xp.zeros_like(logits)
        d[batch_index, position, index] = 1.0
        value, what = float(row[index]), f"MLM logit of id {index} at position {position}"
        reference.backward_from(d_prediction_logits=d)
    else:
        logits = out.logits if target == "class" else out.seq_relationship_logits  # (B, C)
        row = to_numpy(logits[batch_index])
        index = int(np.argmax(row)) if index is None else index
        if not 0 <= index < row.shape[0]:
            raise ValueError(f"{target} output {index} is out of range 0..{row.shape[0] - 1}")
        d = reference.xp.zeros_like(logits)
        d[batch_index, index] = 1.0
        value = float(row[index])
        if target == "class":
            what = f"class logit {index}"
            reference.backward_from(d)
        else:
            what = f"next-sentence logit {index}"
            reference.backward_from(d_seq_relationship_logits=d)
    grads = reference.attention_grads()
    attentions = stack_attentions(out.attentions, batch_index)
    gradients = stack_attentions(grads, batch_index)
    return ModelAttribution(attentions, gradients, attention_attribution(attentions, gradients, normalize=normalize),
                            value, what)
