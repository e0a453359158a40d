"""Numba's on-disk cache, kept in step with the kernels' sources.

Every kernel is compiled with ``cache=True``: the machine code is saved next to the module (or under
``NUMBA_CACHE_DIR``) and reused by later processes. Numba checks a cached kernel against the timestamp
and size of the file that defines it, not against the files it calls into: the attention, loss and GELU
kernels inline ``numba_math.fast_exp``, so an edit to ``numba_math.py`` alone (a ``git pull``, a
checkout of another commit) would leave them running the old exp from the cache, silently.

:func:`drop_stale_caches` closes that gap: it fingerprints the sources of every module in this folder and,
where the fingerprint differs from the one stamped beside the cache files, deletes this folder's cache
files before any kernel loads, so that each kernel compiles afresh once. ``numba_math`` calls it on import
(every module whose kernels call into another imports ``numba_math``).
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAMP = "bert_from_scratch_kernels.sha256"


def sources_fingerprint(folder: Path = HERE) -> str:
    """sha256 over the names and bytes of the ``*.py`` files of ``folder``, in name order."""
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def cache_dirs(folder: Path = HERE) -> list[Path]:
    """Where Numba saves the caches of ``folder``'s modules: the first of its cache locators that applies
    (``NUMBA_CACHE_DIR``, else ``__pycache__`` beside the module when writable, else the user's cache),
    as Numba picks it (``numba.core.caching.CacheImpl``); the locator creates the folder."""
    from numba.core import caching
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")

    def probe():                               # any function: the locators read its first line number
        pass

    sources = sorted(folder.glob("*.py"))
    for locator_class in impl._locator_classes if sources else []:
        locator = locator_class.from_function(probe, str(sources[0]))      # the folder is what counts
        if locator is not None:
            return [Path(locator.get_cache_path())]
    return []


def drop_stale_caches(folder: Path = HERE, dirs: list[Path] | None = None) -> list[Path]:
    """Delete the cached kernels of ``folder``'s modules wherever the stamped fingerprint is not today's.
    Returns the files deleted. Never raises for a folder it cannot read or write (a read-only install)."""
    fingerprint = sources_fingerprint(folder)
    modules = {p.stem for p in folder.glob("*.py")}
    deleted = []
    if dirs is None:
        try:
            dirs = cache_dirs(folder)
        except (AttributeError, ImportError, TypeError) as exc:     # Numba's internals moved: warn, don't fail
            warnings.warn(f"could not find Numba's cache folder ({exc}); if a kernel seems to run old code, "
                          f"delete the *.nbi and *.nbc files of {folder} by hand", RuntimeWarning, stacklevel=2)
            return deleted
    for cache_dir in dirs:
        stamp = cache_dir / STAMP
        try:
            if stamp.read_text() == fingerprint:
                continue
        except OSError:
            pass                               # no stamp yet: caches of unknown sources
        try:
            for path in cache_dir.iterdir():
                if path.suffix in (".nbi", ".nbc") and path.name.split(".", 1)[0] in modules:
                    path.unlink(missing_ok=True)
                    deleted.append(path)
            stamp.write_text(fingerprint)      # a torn stamp only means one more recompilation
        except OSError:
            continue                           # not there yet, or not ours to write
    return deleted
