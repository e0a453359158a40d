"""Atomic files and folders: a crash or a kill never leaves half a file where a whole one was.

Every writer in the package goes through these helpers:

- :func:`atomic_write` for text or bytes;
- :func:`atomic_path` for libraries that write to a path themselves (safetensors, matplotlib):
  they write to a temporary name next to the target, which is renamed into place on success;
- :func:`atomic_dir` for a folder of files (a checkpoint): it is built in a temporary folder and
  swapped in with :func:`replace_dir`;
- :func:`check_writable` to fail before an hour of work, not after it.

``os.replace`` is atomic on POSIX when source and target are on one file system, which is why
the temporaries live next to their targets.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

#: tests only: ``"<point>:<n>:<marker path>"`` pauses the n-th arrival at ``point`` (see :func:`_test_pause`)
TEST_PAUSE_ENV = "BERT_FROM_SCRATCH_TEST_PAUSE"
_arrivals: dict[str, int] = {}


def _test_pause(point: str) -> None:
    """A deterministic window for the kill tests: when ``$BERT_FROM_SCRATCH_TEST_PAUSE`` is
    ``"<point>:<n>:<marker>"``, the n-th time this process reaches ``point`` ("in-write": a folder's
    files are written but not yet swapped in; "between-renames": the old folder is renamed aside and
    the new one not yet in place) it creates the file ``marker`` and sleeps until it is killed."""
    spec = os.environ.get(TEST_PAUSE_ENV)
    if not spec or not spec.startswith(point + ":"):
        return
    _, n, marker = spec.split(":", 2)
    _arrivals[point] = _arrivals.get(point, 0) + 1
    if _arrivals[point] == int(n):
        Path(marker).write_text(str(os.getpid()))
        while True:
            time.sleep(1)


def temporary_name(target: Path) -> Path:
    """``.<name>.tmp-<pid>`` next to ``target``: hidden, and unique per writing process."""
    target = Path(target)
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(target):
    """Yield a temporary path next to ``target``; rename it onto ``target`` if the block succeeds.

    ``with atomic_path(p) as tmp: fig.savefig(tmp, format="png")``. On an exception the temporary
    is removed and ``target`` is untouched."""
    target = Path(target)
    tmp = temporary_name(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(target, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``target`` atomically; return the path."""
    target = Path(target)
    with atomic_path(target) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding=encoding)
        else:
            tmp.write_bytes(data)
    return target


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` at ``target``, never leaving ``target`` half-written.

    POSIX has no atomic swap of two non-empty folders, so: rename the old folder aside
    (``.<name>.old``), rename the new one in, delete the old. A crash between the two renames
    leaves the old complete folder at ``.<name>.old``, which readers fall back to.
    """
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)                     # leftover of a swap that finished but was not cleaned up
        os.replace(target, old)
        _test_pause("between-renames")
    os.replace(tmp, target)                        # (if target was missing, a resumed .old stays until now)
    if old.exists():
        shutil.rmtree(old)


@contextlib.contextmanager
def atomic_dir(target):
    """Yield a fresh temporary folder next to ``target``; on success it replaces ``target``.

    ``with atomic_dir(run / "checkpoint") as tmp: model.save_pretrained(tmp); ...``. On an
    exception the temporary folder is removed and ``target`` is untouched."""
    target = Path(target)
    tmp = temporary_name(target)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        _test_pause("in-write")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, target)


def check_writable(folder) -> None:
    """Create ``folder`` and write/remove a probe file there, or raise a one-line ValueError now."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test_{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"output directory {folder} is not writable ({e.strerror or e}); "
                         f"choose another --out") from None
