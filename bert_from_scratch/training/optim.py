r"""AdamW with decoupled weight decay, global-norm gradient clipping and a linear warmup/decay schedule.

This is the optimiser of the original BERT recipe (google-research/bert ``optimization.py``), with
the bias correction of Loshchilov & Hutter's AdamW as ``torch.optim.AdamW`` implements it, so our
updates can be checked against torch to rounding.

For one parameter :math:`\theta` with gradient :math:`g` at step :math:`t = 1, 2, \dots`
(learning rate :math:`\eta`, weight decay :math:`\lambda`):

.. math::
    \theta &\leftarrow \theta\,(1 - \eta\lambda)                         &&\text{(decoupled decay; } \lambda = 0
                                                                            \text{ for LayerNorm and biases)}\\
    m &\leftarrow \beta_1 m + (1-\beta_1)\, g                             &&\text{(first moment)}\\
    v &\leftarrow \beta_2 v + (1-\beta_2)\, g^2                           &&\text{(second moment)}\\
    \theta &\leftarrow \theta - \frac{\eta}{1-\beta_1^t}\;
            \frac{m}{\sqrt{v}\,/\sqrt{1-\beta_2^t} + \epsilon}

The decay is "decoupled": it shrinks the weights directly instead of being added to the gradient,
so it is not rescaled by Adam's :math:`1/\sqrt{v}`.

The step is memory-bound (it reads and writes four arrays the size of the model and does a handful
of flops per element). :func:`adamw_update` below is the readable reference: plain array code, NumPy
or CuPy, in place through ``out=`` into one reusable scratch buffer, so no temporaries the size of
the model are allocated per step. The optimizer calls the update of its backend (``nn/backend.py``,
the model's): on the CPU that is one fused Numba loop (``kernels/numba_optim.py``) with the same
operations in the same order, bit-identical to this one. Both agree with ``torch.optim.AdamW``
to ~1e-15 in float64.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

from ..nn.xp import get_array_module, to_numpy


def default_no_decay(name: str) -> bool:
    """BERT's rule: no weight decay on LayerNorm weights/biases nor on any bias."""
    return "LayerNorm" in name or name.endswith("bias")


# --------------------------------------------------------------------------------------
# Learning-rate schedule
# --------------------------------------------------------------------------------------
def linear_warmup_decay(step: int, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    r"""Learning rate for the update with 0-based index ``step``: linear warmup, then linear decay to 0.

    .. math::
        \eta(s) = \eta_{\max}\cdot\begin{cases} s / w & s < w \\
                                                 \max\!\big(0, (S - s) / (S - w)\big) & s \ge w \end{cases}

    with ``w = warmup_steps`` and ``S = total_steps``. This is the convention of Hugging Face's
    ``get_linear_schedule_with_warmup`` (and of google-research/bert, which also starts at 0): the
    very first update (``s = 0``) has learning rate 0 when there is any warmup, the peak is reached
    at ``s = w``, and the last update ``s = S - 1`` has ``\eta_{\max} / (S - w)``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    return peak_lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


# --------------------------------------------------------------------------------------
# Gradient clipping
# --------------------------------------------------------------------------------------
def global_grad_norm(grads: Mapping[str, object]) -> float:
    r"""``sqrt(sum_k ||g_k||^2)`` over all gradients (a Python float; NaN/inf if any gradient is)."""
    total_sq = 0.0
    for g in grads.values():
        xp = get_array_module(g)
        flat = g.reshape(-1)                      # (n,) a view for contiguous arrays
        norm_k = float(xp.linalg.norm(flat))      # BLAS nrm2/dot: no temporary the size of g
        total_sq += norm_k * norm_k
    return math.sqrt(total_sq)


def clip_scale(total_norm: float, max_norm: float, eps: float = 1e-6) -> float:
    r"""The factor global-norm clipping multiplies every gradient by: :math:`\min(1, \text{max\_norm} / (N + \epsilon))`
    for the global norm :math:`N` (as ``torch.nn.utils.clip_grad_norm_``). 1.0 when :math:`N` is not finite (the
    caller stops instead)."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    if not math.isfinite(total_norm):
        return 1.0
    return min(1.0, max_norm / (total_norm + eps))


def clip_grad_norm(grads: Mapping[str, object], max_norm: float, eps: float = 1e-6) -> float:
    r"""Scale all gradients in place so that their global norm is at most ``max_norm``.

    .. math::
        N = \sqrt{\textstyle\sum_k \lVert g_k \rVert^2},\qquad
        g_k \leftarrow g_k \cdot \min\!\big(1,\ \tfrac{\text{max\_norm}}{N + \epsilon}\big)

    as ``torch.nn.utils.clip_grad_norm_`` does. Returns ``N`` (before clipping). When ``N`` is not
    finite the gradients are left untouched and the caller is expected to stop (see ``loop.py``).
    The training loop does not scale the gradients in a pass of their own: it hands the factor
    (:func:`clip_scale`) to :meth:`AdamW.step`, whose update multiplies each gradient as it reads it.
    """
    total_norm = global_grad_norm(grads)
    coef = clip_scale(total_norm, max_norm, eps)                   # refuses max_norm <= 0 before anything changes
    if coef < 1.0:
        for g in grads.values():
            g *= g.dtype.type(coef)
    return total_norm


# --------------------------------------------------------------------------------------
# The update of one parameter: the reference
# --------------------------------------------------------------------------------------
def adamw_update(param, grad, exp_avg, exp_avg_sq, scratch, *, lr, weight_decay, beta1, beta2, eps,
               bias_correction1, bias_correction2, grad_scale=1.0) -> bool:
    """One AdamW update of one parameter, in place, with NumPy or CuPy and one scratch buffer.

    ``param, grad, exp_avg, exp_avg_sq, scratch`` all have the parameter's shape; ``scratch`` is
    overwritten. Operation order follows torch's single-tensor AdamW. ``grad_scale`` is the clipping
    factor (:func:`clip_scale`): the update sees ``grad * grad_scale``, as if the gradient had been
    scaled in place first (``grad`` itself is left as it is). Returns whether the updated parameter is
    finite: a finite gradient can still make non-finite weights (a learning rate of 1e300).
    """
    xp = get_array_module(param)
    dtype = param.dtype.type
    if grad_scale != 1.0:
        grad = grad * dtype(grad_scale)                           # g <- g * clip factor
    if weight_decay != 0.0:
        param *= dtype(1.0 - lr * weight_decay)                   # theta <- theta (1 - lr wd)
    exp_avg *= dtype(beta1)                                       # m <- b1 m + (1 - b1) g
    xp.multiply(grad, dtype(1.0 - beta1), out=scratch)
    exp_avg += scratch
    exp_avg_sq *= dtype(beta2)                                    # v <- b2 v + (1 - b2) g^2
    xp.multiply(grad, grad, out=scratch)
    scratch *= dtype(1.0 - beta2)
    exp_avg_sq += scratch
    xp.sqrt(exp_avg_sq, out=scratch)                              # denom = sqrt(v) / sqrt(bc2) + eps
    scratch /= dtype(math.sqrt(bias_correction2))
    scratch += dtype(eps)
    xp.divide(exp_avg, scratch, out=scratch)                      # m / denom
    scratch *= dtype(-lr / bias_correction1)                      # * -(lr / bc1)
    param += scratch
    return bool(xp.isfinite(param).all())


# --------------------------------------------------------------------------------------
# The optimiser
# --------------------------------------------------------------------------------------
def check_frozen(params: Mapping, frozen) -> None:
    """Refuse, in one line, frozen names that are not parameters (a typo would otherwise freeze nothing)."""
    unknown = sorted(set(frozen) - set(params))
    if unknown:
        raise ValueError(f"frozen names no parameter: {', '.join(unknown[:5])}")


class AdamW:
    """AdamW over a dict of named arrays, updated in place.

    Parameters
    ----------
    params : dict name -> ndarray
        The model's own arrays (``model.params``); :meth:`step` writes into them, so the model
        sees the update without copying. Build the optimiser *after* ``model.to("cupy")``.
    lr : float
        Default learning rate (a schedule passes ``lr=`` to :meth:`step` instead).
    weight_decay : float
        Decoupled decay for parameters where ``no_decay(name)`` is False.
    betas, eps : Adam's moment decay rates and denominator guard (BERT: 0.9, 0.999, 1e-6).
    no_decay : callable name -> bool
        Which parameters are exempt from weight decay (default: LayerNorm and biases).
    backend : the model's :class:`~bert_from_scratch.nn.backend.Backend` (``model.backend``) or a name;
        "auto" (default) picks it from the arrays, as a model does. Its ``adamw_update`` does the work.
    frozen : names of parameters :meth:`step` leaves as they are (no update, no decay, moments kept at 0);
        their gradients are still checked, and still count wherever the caller uses them (global-norm clipping).
    """

    def __init__(self, params: dict, lr: float = 1e-4, weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 no_decay: Callable[[str], bool] | None = default_no_decay, backend="auto", frozen=()):
        if not isinstance(params, Mapping) or not params:
            raise ValueError("params must be a non-empty dict name -> array")
        check_frozen(params, frozen)
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        for name, p in params.items():
            if getattr(p, "dtype", None) is None or p.dtype.kind != "f":
                raise ValueError(f"parameter {name!r} must be a floating-point array, got {type(p).__name__}")
        self.params = params
        self.frozen = frozenset(frozen)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        no_decay = no_decay or (lambda name: False)
        self.decay = {name: (self.weight_decay if not no_decay(name) else 0.0) for name in params}
        from ..nn.backend import get_backend

        self.backend = get_backend(backend, like=next(iter(params.values())))
        self.step_count = 0                               # number of updates done (torch's "step")
        self.exp_avg = {}                                 # name -> (param shape) first moment
        self.exp_avg_sq = {}                              # name -> (param shape) second moment
        for name, p in params.items():
            xp = get_array_module(p)
            self.exp_avg[name] = xp.zeros_like(p)
            self.exp_avg_sq[name] = xp.zeros_like(p)
        self._scratch = {}                                # (xp, dtype) -> flat buffer of the largest size

    # ------------------------------------------------------------------ the update
    def _scratch_like(self, p):
        xp = get_array_module(p)
        key = (xp.__name__, p.dtype.str)
        buf = self._scratch.get(key)
        if buf is None or buf.size < p.size:
            largest = max(q.size for q in self.params.values() if q.dtype == p.dtype)
            buf = self._scratch[key] = xp.empty(largest, dtype=p.dtype)
        return buf[: p.size].reshape(p.shape)

    def _check_grads(self, grads: Mapping) -> None:
        missing = [k for k in self.params if k not in grads]
        extra = [k for k in grads if k not in self.params]
        if missing or extra:
            raise ValueError(f"gradients do not match parameters: missing {missing[:5]}, unexpected {extra[:5]}")
        for name, p in self.params.items():
            g = grads[name]
            if g.shape != p.shape:
                raise ValueError(f"gradient {name!r} has shape {g.shape}, parameter has {p.shape}")

    def step(self, grads: Mapping[str, object], lr: float | None = None, grad_scale: float = 1.0) -> bool:
        """Apply one AdamW update to every parameter but the frozen ones, in place (``grads`` has the same
        keys/shapes; each gradient is taken times ``grad_scale``, the clipping factor, and left as it is).
        Returns whether every parameter it updated is finite afterwards (the others have not changed)."""
        self._check_grads(grads)
        lr = self.lr if lr is None else float(lr)
        beta1, beta2 = self.betas
        self.step_count += 1
        t = self.step_count
        bias_correction1 = 1.0 - beta1 ** t
        bias_correction2 = 1.0 - beta2 ** t
        finite = True
        for name, p in self.params.items():
            if name in self.frozen:
                continue
            g, m, v = grads[name], self.exp_avg[name], self.exp_avg_sq[name]
            wd = self.decay[name]
            if g.dtype != p.dtype:
                g = g.astype(p.dtype)
            finite &= self.backend.adamw_update(p, g, m, v, self._scratch_like(p), lr=lr, weight_decay=wd,
                                                beta1=beta1, beta2=beta2, eps=self.eps,
                                                bias_correction1=bias_correction1,
                                                bias_correction2=bias_correction2, grad_scale=grad_scale)
        return finite

    # ------------------------------------------------------------------ saving
    def state_dict(self) -> dict:
        """Flat dict of host (NumPy) arrays, ready for ``safetensors.numpy.save_file``.

        Keys: ``"exp_avg.<name>"``, ``"exp_avg_sq.<name>"`` for every parameter, and ``"step"``
        (int64, shape (1,)). The arrays are copies: later steps do not change them.
        """
        state = {}
        for name in self.params:
            state[f"exp_avg.{name}"] = np.array(to_numpy(self.exp_avg[name]), copy=True)
            state[f"exp_avg_sq.{name}"] = np.array(to_numpy(self.exp_avg_sq[name]), copy=True)
        state["step"] = np.array([self.step_count], dtype=np.int64)
        return state

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Copy a :meth:`state_dict` back into this optimiser's buffers (same parameter names/shapes)."""
        expected = {"step"} | {f"{kind}.{n}" for n in self.params for kind in ("exp_avg", "exp_avg_sq")}
        missing = sorted(expected - set(state))
        extra = sorted(set(state) - expected)
        if missing or extra:
            raise ValueError(f"optimizer state does not match the parameters: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
        for name, p in self.params.items():
            for kind, buffers in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                src = state[f"{kind}.{name}"]
                if tuple(src.shape) != tuple(p.shape):
                    raise ValueError(f"optimizer state {kind}.{name} has shape {tuple(src.shape)}, "
                                     f"parameter has {tuple(p.shape)}")
                xp = get_array_module(p)
                buffers[name][...] = xp.asarray(src, dtype=p.dtype)
        self.step_count = int(np.asarray(to_numpy(state["step"])).reshape(-1)[0])

    def __repr__(self) -> str:
        n = sum(int(p.size) for p in self.params.values())
        n_decay = sum(1 for d in self.decay.values() if d > 0)
        return (f"AdamW({len(self.params)} tensors, {n} values, lr={self.lr}, weight_decay={self.weight_decay} "
                f"on {n_decay} tensors, betas={self.betas}, eps={self.eps}, step={self.step_count})")
