"""transformers imported from the repository root (bert_from_scratch/hf_import.py): our top-level kernels/ must not
be taken for the PyPI package `kernels`, which transformers >= 5.25 imports."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from bert_from_scratch.hf_import import shadows_kernels
from conftest import requires_transformers

ROOT = Path(__file__).resolve().parent.parent
# run from the repository root, with the root first on sys.path, as `python -m pytest` and `python -m ...` do
PLAIN = "import sys; sys.path.insert(0, ''); import transformers; transformers.BertModel; print('ok')"
HELPED = ("import sys; sys.path.insert(0, ''); from bert_from_scratch.hf_import import import_transformers; "
          "t = import_transformers(); t.BertModel; import kernels; print(kernels.__file__)")


def run(code):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_only_the_folders_holding_our_kernels_are_set_aside():
    assert shadows_kernels(str(ROOT)) and not shadows_kernels(sysconfig.get_paths()["purelib"])
    assert not shadows_kernels(str(ROOT / "kernels")) and not shadows_kernels(str(ROOT / "tests"))


@requires_transformers
def test_transformers_imports_from_the_repository_root():
    """With the PyPI `kernels` installed (transformers >= 5.25 requires it), a plain import from the root fails on
    our kernels/ and the helper's succeeds with the real package; without it, both import transformers."""
    try:
        importlib.metadata.version("kernels")
        have_pypi_kernels = True
    except importlib.metadata.PackageNotFoundError:
        have_pypi_kernels = False
    helped = run(HELPED)
    assert helped.returncode == 0, helped.stderr[-2000:]
    plain = run(PLAIN)
    if have_pypi_kernels:
        assert not Path(helped.stdout.strip()).resolve().is_relative_to(ROOT / "kernels"), helped.stdout
        assert plain.returncode != 0 and "from 'kernels'" in plain.stderr, (plain.stdout, plain.stderr[-2000:])
    else:
        assert plain.returncode == 0 and plain.stdout.strip() == "ok", plain.stderr[-2000:]
