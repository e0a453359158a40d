r"""The one training loop: every job (pretraining, fine-tuning) trains through :func:`run_loop`.

One step (:func:`train_step`) on a batch, for a model with ``forward(**inputs, training=True)`` and
``backward()``:

.. math::
    L = \text{model.forward}(x),\qquad g = \nabla_\theta L \xrightarrow{\ \text{clip}\ \lVert g\rVert\le c\ }
    \theta \leftarrow \text{AdamW}(\theta, g, \eta_s)

The loss is checked before the backward and the gradient norm before the update: a NaN/inf
skips the update and ends the loop ("diverged"). A finite gradient can still make non-finite
weights (a learning rate of 1e300); the update checks the weights it writes (``AdamW.step`` returns
whether they are finite), and such a step ends the loop as well, before any callback could save them.
Either way the job's last checkpoint stays as it was, and the message names the step it holds. (Nor
are the gradients scaled by the clipping factor in a pass of their own: the update takes the factor.)

:func:`run_loop` draws batches, runs steps, keeps the progress bar and the clock, and after each
step calls the job's callbacks with a :class:`LoopState` (then updates the bar): they record
metrics, evaluate, save checkpoints, and may set ``state.stop`` (early stopping). A job describes only its data, its
schedule and its metrics.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from ..runtime_env import warn_if_numpy_came_first
from .optim import clip_scale, global_grad_norm


@dataclass
class StepResult:
    """What one training step did."""

    loss: float                 # the batch's loss before the update
    grad_norm: float            # global gradient norm before clipping (NaN when the loss was not finite)
    output: object              # the model's forward output (logits, for the job's metrics)
    diverged: bool              # loss, gradient norm or the updated weights not finite
    updated: bool = True        # False when the update was skipped (non-finite loss or gradient)

    def what_diverged(self) -> str:
        if not math.isfinite(self.loss):
            return f"loss {self.loss} is not finite; stopped before updating the weights"
        if not math.isfinite(self.grad_norm):
            return f"gradient norm {self.grad_norm} (loss {self.loss}) is not finite; stopped before updating the weights"
        return (f"the update made the weights non-finite (loss {self.loss}, gradient norm {self.grad_norm}); "
                f"stopped, and they are not saved")


def train_step(model, inputs: dict, optimizer, lr: float, max_grad_norm: float, sync=None) -> StepResult:
    """forward -> finite check -> backward -> global gradient norm, finite check -> AdamW update at ``lr`` of the
    clipped gradients (``grads * clip_scale``), which says whether the weights it wrote are finite.

    ``sync`` (data-parallel runs, :class:`~bert_from_scratch.distributed.gradients.GradientSync`): the loss
    becomes the whole batch's (summed over the ranks), each rank's backward weights its shard by its share of
    the batch, and the gradients are averaged over the ranks before the clip, so every rank makes the same
    update. None (one process): the step as it always was."""
    out = model.forward(**inputs, training=True)
    loss, backward_kwargs, grad_scale = (out.loss, {}, 1.0) if sync is None else sync.loss(out, inputs)
    grad_norm = float("nan")
    grads = None
    if math.isfinite(loss):
        grads = model.backward(**backward_kwargs)
        if sync is not None:
            grads = sync.gradients(grads, grad_scale)
        grad_norm = global_grad_norm(grads)
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        return StepResult(loss, grad_norm, out, diverged=True, updated=False)
    finite = optimizer.step(grads, lr=lr, grad_scale=clip_scale(grad_norm, max_grad_norm))
    return StepResult(loss, grad_norm, out, diverged=not finite)


@dataclass
class LoopState:
    """The loop's state, handed to every callback after every step."""

    step: int                           # optimizer steps done (a resumed run starts above 0)
    total_steps: int                    # length of the schedule (and of the progress bar)
    last: StepResult | None = None      # the step just done
    batch: dict | None = None           # its batch, as the job's iterator yielded it
    lr: float = 0.0                     # its learning rate
    seconds: float = 0.0                # time spent in steps (batch fetch included; callbacks excluded)
    stop: bool = False                  # a callback sets it to end the loop after this step
    diverged: bool = False
    message: str = ""                   # why the loop diverged, for the user


def run_loop(model, optimizer, batches: Iterable[dict], *, schedule: Callable[[int], float], total_steps: int,
             start_step: int = 0, stop_at: int | None = None, max_grad_norm: float = 1.0,
             inputs: Callable[[dict], dict] = dict, callbacks: Sequence[Callable[[LoopState], None]] = (),
             kept: Callable[[LoopState], str] = lambda state: "no checkpoint had been written yet",
             advice: str = "Lower the learning rate.", postfix: Callable[[LoopState], dict] | None = None,
             progress: bool = True, desc: str = "train", log: Callable[[str], None] | None = None,
             sync=None) -> LoopState:
    """Train until ``stop_at`` steps (default ``total_steps``), ``batches`` runs out, a callback stops, or a NaN.

    Parameters
    ----------
    model, optimizer : trained in place.
    batches : yields one batch (any dict) per step; ``inputs(batch)`` gives the model's forward kwargs.
    schedule : step index (0-based, the update about to be made) -> learning rate.
    callbacks : called in order after every completed step with the :class:`LoopState`.
    kept : on divergence, says which weights the user can still use (e.g. the last checkpoint's step).
    postfix : the progress bar's numbers after each step.
    sync : data-parallel runs: averages the gradients over the ranks (see :func:`train_step`); None: one process.
    """
    from tqdm.auto import tqdm

    log = log or tqdm.write
    warn_if_numpy_came_first(getattr(model, "params", None))   # (once per process) OpenBLAS's waits set too late
    stop_at = total_steps if stop_at is None else stop_at
    state = LoopState(step=start_step, total_steps=total_steps)
    batch_iter = iter(batches)
    bar = tqdm(total=total_steps, initial=start_step, disable=not progress, desc=desc, unit="step",
               dynamic_ncols=True)
    try:
        while state.step < stop_at:
            t0 = time.perf_counter()
            batch = next(batch_iter, None)
            if batch is None:
                break
            lr = schedule(state.step)
            result = train_step(model, inputs(batch), optimizer, lr, max_grad_norm, sync)
            state.last, state.batch, state.lr = result, batch, lr
            if result.diverged:
                state.diverged = True
                state.message = (f"training diverged at step {state.step}: {result.what_diverged()}; {kept(state)}. "
                                 f"{advice}")
                log(state.message)
                break
            state.step += 1
            state.seconds += time.perf_counter() - t0
            for callback in callbacks:
                callback(state)
            bar.update(1)
            if postfix is not None:
                bar.set_postfix(**postfix(state))
            if state.stop:
                break
    finally:
        bar.close()
    return state
