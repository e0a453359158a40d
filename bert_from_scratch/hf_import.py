"""Importing Hugging Face ``transformers`` (the reference the benches and tests compare with) from a checkout.

The repository's top-level ``kernels/`` is this package's kernels (installed as ``bert_from_scratch.kernels``). Run
from the repository root (``python -m pytest``, ``python -m bert_from_scratch...``), the root is first on
``sys.path``, so a plain ``import kernels`` finds that folder. transformers >= 5.25 depends on the PyPI package
``kernels`` and imports it (``transformers.integrations.hub_kernels``): it would get ours and fail with
"cannot import name 'CUDAProperties' from 'kernels'". :func:`import_transformers` imports transformers with the
folders that hold our ``kernels/`` left out of ``sys.path`` for the moment, so the real package (when installed)
is the one cached in ``sys.modules``; the lazy parts of transformers loaded later reuse it.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

#: a file only this project's ``kernels/`` has: a ``sys.path`` folder holding it would shadow the PyPI package
OURS = Path("kernels") / "numba_attention.py"


def shadows_kernels(entry: str) -> bool:
    """Whether the ``sys.path`` entry ``entry`` ('' is the current folder) holds this project's ``kernels/``."""
    return (Path(entry or ".") / OURS).is_file()


def import_transformers():
    """``transformers``, with ``import kernels`` inside it resolved past this repository's ``kernels/``."""
    saved = sys.path[:]
    sys.path[:] = [p for p in saved if not shadows_kernels(p)]
    cached = sys.modules.get("kernels")
    if cached is not None and shadows_kernels(str(Path(getattr(cached, "__file__", "") or ".").parent.parent)):
        del sys.modules["kernels"]                      # ours, imported under the wrong name earlier
    try:
        transformers = importlib.import_module("transformers")
        if importlib.util.find_spec("transformers.integrations.hub_kernels") is not None:
            importlib.import_module("transformers.integrations.hub_kernels")   # imports `kernels` now, if it will
    finally:
        sys.path[:] = saved
    return transformers
