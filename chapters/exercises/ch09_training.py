"""Chapter 9 exercises: the AdamW update, the learning-rate schedule and gradient clipping.

Check with:  bert-from-scratch check 9
"""
import math  # noqa: F401

import numpy as np  # noqa: F401


def adamw_step(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01):
    """One AdamW update, IN PLACE on param, m, v (arrays of one shape). ``step`` counts from 1.

        param <- param * (1 - lr * weight_decay)          (decoupled decay, not added to the gradient)
        m <- beta1 m + (1 - beta1) grad;   v <- beta2 v + (1 - beta2) grad^2
        param <- param - lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)

    Use in-place operations (``param *= ...``, ``m += ...``): ``param = param - ...`` only
    rebinds a local name and the caller's array never changes. ``grad`` is read-only: do not
    modify it.

    The divisions by 1 - beta^step are the bias correction of Adam and of torch.optim.AdamW /
    Hugging Face; this exercise asks for it. (The original BERT optimizer, google-research/bert's
    AdamWeightDecayOptimizer, omitted it.)
    """
    raise NotImplementedError("chapter 9: adamw_step")


def warmup_linear_lr(step, total_steps, warmup_steps, peak_lr):
    """Learning rate of the update with 0-based index ``step``.

    Linear warmup from 0 (at step 0) to peak_lr (at step == warmup_steps), then linear decay
    to 0 at step == total_steps (never below 0):  peak * (total - step) / (total - warmup).
    warmup_steps may be 0 (no warmup) or equal to total_steps.
    """
    raise NotImplementedError("chapter 9: warmup_linear_lr")


def clip_by_global_norm(grads, max_norm):
    """Scale every gradient in the dict ``grads`` IN PLACE so that their global norm is <= max_norm.

    norm = sqrt(sum over all tensors of sum(g^2)); if max_norm / (norm + 1e-6) < 1, multiply every
    tensor by that factor (torch's formula; the textbook max_norm / norm is accepted too: they
    differ by ~1e-6 / norm). Returns norm (before clipping) as a float.
    """
    raise NotImplementedError("chapter 9: clip_by_global_norm")
