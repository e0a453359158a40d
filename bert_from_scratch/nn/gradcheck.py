r"""A finite-difference gradient checker, used by the tests and by the exercise graders.

For a scalar function ``f`` of some arrays, the central difference

.. math::  \frac{\partial f}{\partial x_i} \approx \frac{f(x + h e_i) - f(x - h e_i)}{2h}

has truncation error :math:`O(h^2)` and rounding error :math:`O(\epsilon_{mach} |f| / h)`. In float64
with ``h = 1e-6`` both are around 1e-10 relative for the smooth functions of BERT, so a correct
backward agrees to ~1e-8 and a wrong one (a missing term) is off by 1e-2 or more: the checker
draws the line at a relative error of 1e-6 by default, far from both.

The relative error of a tensor is ``|a - n|_2 / max(|a|_2 + |n|_2, tiny)`` over the checked entries:
robust where single entries are near zero.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .xp import to_numpy


@dataclass
class TensorCheck:
    name: str
    rel_error: float
    max_abs_error: float
    n_checked: int
    worst_index: tuple
    tol: float = 1e-6
    atol: float = 1e-9

    @property
    def ok(self) -> bool:
        # an all-zero gradient (e.g. an unused embedding row) has no meaningful relative error:
        # accept it when the absolute error is at the level of finite-difference noise
        return self.rel_error <= self.tol or self.max_abs_error <= self.atol


@dataclass
class GradcheckReport:
    checks: list = field(default_factory=list)
    tol: float = 1e-6

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def worst(self) -> TensorCheck:
        return max(self.checks, key=lambda c: c.rel_error)

    def failures(self):
        return [c for c in self.checks if not c.ok]

    def __str__(self):
        lines = [f"{'tensor':<60} {'rel error':>10} {'max abs':>10} {'entries':>8}"]
        for c in self.checks:
            flag = "" if c.ok else "  <-- WRONG"
            lines.append(f"{c.name:<60} {c.rel_error:>10.2e} {c.max_abs_error:>10.2e} {c.n_checked:>8}{flag}")
        return "\n".join(lines)

    def assert_ok(self):
        if not self.ok:
            bad = ", ".join(f"{c.name} (rel error {c.rel_error:.2e} at index {c.worst_index})"
                            for c in self.failures())
            raise AssertionError(f"gradient check failed (tol {self.tol:.0e}): {bad}\n{self}")


def numerical_gradient(f, x, indices, h=1e-6):
    """Central differences of scalar ``f()`` w.r.t. the entries ``indices`` of array ``x`` (changed in place
    and restored)."""
    out = np.empty(len(indices))
    for n, idx in enumerate(indices):
        old = x[idx].copy() if hasattr(x[idx], "copy") else x[idx]
        x[idx] = old + h
        f_plus = float(f())
        x[idx] = old - h
        f_minus = float(f())
        x[idx] = old
        out[n] = (f_plus - f_minus) / (2 * h)
    return out


def gradcheck(f, inputs: dict, analytic: dict, h=1e-6, tol=1e-6, max_entries=20, seed=0,
              names=None, atol=1e-9) -> GradcheckReport:
    """Compare analytic gradients to central differences.

    f:         a function of no arguments returning a scalar; it must read the arrays in ``inputs``
               (which are perturbed in place and restored).
    inputs:    name -> float64 array.
    analytic:  name -> the gradient your backward computed for that array (same shape).
    max_entries: for big tensors, a random subset of this many entries is checked (all if fewer).
    tol, atol: a tensor passes when its relative error is <= tol, or its largest absolute error is
               <= atol (for gradients that are exactly zero, where a relative error means nothing);
               atol is raised to 10x the rounding noise of the differences, eps * |f| / h, when larger.
    Returns a :class:`GradcheckReport`; call ``.assert_ok()`` to raise with a per-tensor table.
    """
    rng = np.random.default_rng(seed)
    report = GradcheckReport(tol=tol)
    # rounding noise of a central difference is ~ eps_mach * |f| / h: an absolute error below a few
    # times that is no evidence of a bug (matters only for gradients that are exactly zero)
    atol = max(atol, 10 * np.finfo(np.float64).eps * max(1.0, abs(float(f()))) / h)
    for name in (names or list(inputs)):
        x = inputs[name]
        if x.dtype != np.float64:
            raise ValueError(f"gradcheck needs float64 inputs for useful precision; {name} is {x.dtype}")
        if name not in analytic:
            raise ValueError(f"no analytic gradient given for {name}")
        a = to_numpy(analytic[name])
        if a.shape != x.shape:
            raise ValueError(f"analytic gradient of {name} has shape {a.shape}; the input has {x.shape}")
        if x.size <= max_entries:
            flat = np.arange(x.size)
        else:
            flat = rng.choice(x.size, size=max_entries, replace=False)
            # always include the entry with the largest analytic gradient: it is where bugs show most
            flat[0] = int(np.argmax(np.abs(a)))
            flat = np.unique(flat)
        indices = [np.unravel_index(i, x.shape) for i in flat]
        num = numerical_gradient(f, x, indices, h)
        ana = np.array([a[idx] for idx in indices])
        diff = np.abs(ana - num)
        denom = max(np.linalg.norm(ana) + np.linalg.norm(num), 1e-30)
        rel = float(np.linalg.norm(ana - num) / denom)
        report.checks.append(TensorCheck(name, rel, float(diff.max()), len(indices),
                                         tuple(int(i) for i in indices[int(np.argmax(diff))]), tol, atol))
    return report
