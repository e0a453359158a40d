"""Pick the array module (NumPy or CuPy) from the arrays themselves.

Layer code never calls ``np.`` on data: it asks ``xp = get_array_module(x)`` and uses
``xp.exp``, ``xp.matmul``, ... so that the very same code runs on CuPy arrays on a GPU.
"""
from __future__ import annotations

import numpy as np

try:  # CuPy is optional: importing it is cheap, using it needs a GPU.
    import cupy as _cupy  # type: ignore
except Exception:  # pragma: no cover - depends on the machine
    _cupy = None


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def is_cupy_array(a) -> bool:
    return _cupy is not None and isinstance(a, _cupy.ndarray)


def to_numpy(a):
    """A NumPy copy/view of ``a`` (moves CuPy arrays to the host)."""
    if is_cupy_array(a):
        return _cupy.asnumpy(a)
    return np.asarray(a)


def gpu_available() -> bool:
    """True when CuPy is importable *and* a CUDA device actually works."""
    if _cupy is None:
        return False
    try:
        _cupy.zeros(1).sum().item()
        return True
    except Exception:
        return False


def require_gpu(what: str) -> None:
    """Raise a one-line ValueError naming ``what`` unless CuPy can use a CUDA device."""
    if not gpu_available():
        raise ValueError(f"{what} needs CuPy and a working CUDA GPU (pip install cupy-cuda12x)")


def erf(x):
    """Exact error function for NumPy or CuPy arrays (GELU needs the exact erf)."""
    if is_cupy_array(x):
        import cupyx.scipy.special as cs  # type: ignore

        return cs.erf(x)
    return _np_erf(x)


def _np_erf(x):
    try:
        from scipy.special import erf as sp_erf  # fast, vectorised, exact to rounding

        return sp_erf(x)
    except ImportError:  # pragma: no cover - scipy ships with most installs
        import math

        return np.vectorize(math.erf, otypes=[x.dtype])(x)
