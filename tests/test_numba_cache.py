"""Numba's cached kernels follow the sources they inline (kernels/numba_cache.py).

Numba revalidates a cached kernel against the file that defines it only. A kernel that inlines a helper from
another file keeps the helper's old code after that file changes, unless the cache is dropped; the first test
shows exactly that hazard (so it can fail), then that ``drop_stale_caches`` removes it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bert_from_scratch.kernels import numba_cache

HELPER = """
from numba import njit

@njit(inline="always", cache=True)
def helper(x):
    return x + {value}
"""

KERNEL = """
from numba import njit
from .helper import helper

@njit(cache=True)
def kernel(x):
    return helper(x) * 10
"""

RUN = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
if {guard}:
    from bert_from_scratch.kernels.numba_cache import drop_stale_caches
    drop_stale_caches(Path({folder!r}))
from pkg.kernel import kernel
print(kernel(1))
"""


def _write_package(root, value):
    pkg = root / "pkg"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "kernel.py").write_text(textwrap.dedent(KERNEL))
    helper = pkg / "helper.py"
    old = helper.stat() if helper.exists() else None
    helper.write_text(textwrap.dedent(HELPER.format(value=value)))
    if old is not None:                                     # a new mtime even within the clock's resolution
        os.utime(helper, ns=(old.st_atime_ns, old.st_mtime_ns + 10**9))
    return pkg


def _run(root, pkg, guard, env):
    code = RUN.format(root=str(root), folder=str(pkg), guard=guard)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


@pytest.mark.parametrize("where", ["pycache", "NUMBA_CACHE_DIR"])
def test_an_edited_inlined_helper_is_stale_in_numbas_cache_unless_dropped(tmp_path, where):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    if where == "NUMBA_CACHE_DIR":
        env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-cache")
    root = tmp_path / "src"
    root.mkdir()
    pkg = _write_package(root, 1)
    assert _run(root, pkg, False, env) == 20                # (1 + 1) * 10, compiled and cached
    _write_package(root, 2)
    assert _run(root, pkg, False, env) == 20                # the hazard: the cache still inlines "+ 1"
    assert _run(root, pkg, True, env) == 30                 # dropped: (1 + 2) * 10
    assert _run(root, pkg, True, env) == 30                 # and cached again under the new stamp


def test_drop_stale_caches_deletes_only_the_folders_modules_and_only_when_sources_change(tmp_path):
    src = tmp_path / "kernels"
    src.mkdir()
    (src / "a.py").write_text("x = 1\n")
    (src / "b.py").write_text("y = 2\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    ours = [cache / "a.kernel-12.py311.nbi", cache / "a.kernel-12.py311.1.nbc", cache / "b.f-3.py311.nbi"]
    other = [cache / "c.g-1.py311.nbi", cache / "a.cpython-311.pyc"]
    for path in ours + other:
        path.write_bytes(b"")
    assert sorted(numba_cache.drop_stale_caches(src, [cache])) == sorted(ours)    # no stamp yet
    assert all(p.exists() for p in other)
    assert (cache / numba_cache.STAMP).read_text() == numba_cache.sources_fingerprint(src)
    ours[0].write_bytes(b"")
    assert numba_cache.drop_stale_caches(src, [cache]) == []                     # sources unchanged
    (src / "b.py").write_text("y = 3\n")
    assert numba_cache.drop_stale_caches(src, [cache]) == [ours[0]]              # b.py changed: all ours go
    assert numba_cache.drop_stale_caches(src, [tmp_path / "read-only" / "missing"]) == []


def test_the_kernels_cache_folder_is_numbas():
    """The folder the guard cleans is the one Numba saves this package's kernels in."""
    from bert_from_scratch.kernels import numba_math                    # noqa: F401  (compiles nothing)
    from numba.core.caching import FunctionCache

    dirs = numba_cache.cache_dirs()
    assert len(dirs) == 1
    cache = FunctionCache(numba_math._max_lanes.py_func)
    assert Path(cache._cache_path).resolve() == dirs[0].resolve()


def test_numbas_internals_moving_warns_instead_of_breaking_the_import(tmp_path, monkeypatch):
    """``numba_math`` runs the guard on import: if Numba's cache locators move, a warning, not a crash."""
    (tmp_path / "a.py").write_text("x = 1\n")

    def moved(folder):
        raise AttributeError("module 'numba.core.caching' has no attribute 'CacheImpl'")

    monkeypatch.setattr(numba_cache, "cache_dirs", moved)
    with pytest.warns(RuntimeWarning, match="could not find Numba's cache folder"):
        assert numba_cache.drop_stale_caches(tmp_path) == []
