"""A job's run folder (``--out``): one writer at a time, nothing clobbered, no debris left behind.

:func:`hold_run_folder` is what every training job enters before it writes anything:

- **one writer.** It takes an advisory lock, ``fcntl.flock`` on ``OUT/.lock``, and writes its pid
  there. A second process asking for the same folder is refused with one line naming the owner's pid.
  The kernel drops the lock when its owner dies (even by ``kill -9``), so a lock left by a dead run is
  stale by construction: the next run takes it and says so. The lock file itself stays (deleting it
  while another process opens it would let two runs lock two different files).
- **debris of dead writers.** Under the lock no one else writes here, so every temporary of the
  atomic writers (``.<name>.tmp-<pid>``, ``files.temporary_name``) and every write probe is debris of a
  killed run: it is removed. A folder swap killed between its two renames left only
  ``.<name>.old`` (complete): it is put back in place.
- **nothing clobbered.** :func:`refuse_to_clobber` refuses to start a fresh run over a folder that
  already holds a checkpoint unless the caller says ``resume`` or ``overwrite``.

The lock is re-entrant within one process (the job wrapper and the loop below it both hold it).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from pathlib import Path

from ..constants import TRAINER_STATE_NAME
from ..files import check_writable

LOCK_NAME = ".lock"
_DEBRIS = re.compile(r"^\..+\.tmp-(\d+)$|^\.write_test_(\d+)$")
_held: dict[Path, list] = {}                 # resolved folder -> [file descriptor, depth]


class RunFolderError(ValueError):
    """The run folder cannot be used: another run holds it, or it holds a checkpoint to keep."""


def _read_owner(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return text or "unknown"


def clean_debris(folder: Path) -> list[str]:
    """Remove temporaries and probes of dead writers; restore a ``.<name>.old`` left without its
    ``<name>``. Only call while holding the folder's lock. Returns what was done, for the log."""
    done = []
    for entry in sorted(folder.iterdir()):
        match = _DEBRIS.match(entry.name)
        if match and int(match.group(1) or match.group(2)) != os.getpid():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            done.append(f"removed {entry.name}, left by a writer that was stopped")
        elif entry.name.startswith(".") and entry.name.endswith(".old") and entry.is_dir():
            target = entry.with_name(entry.name[1:-len(".old")])
            if not target.exists():
                os.replace(entry, target)
                done.append(f"restored {target.name} from {entry.name} (a swap was interrupted)")
    return done


@contextlib.contextmanager
def hold_run_folder(folder, log=None):
    """Create ``folder`` if needed, check it is writable, lock it for this process and clean debris.

    Raises :class:`RunFolderError` (one line) when another process holds it."""
    folder = Path(folder)
    check_writable(folder)
    key = folder.resolve()
    if key in _held:                                       # this process holds it already
        _held[key][1] += 1
        try:
            yield folder
        finally:
            _held[key][1] -= 1
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read_owner(fd)
        os.close(fd)
        raise RunFolderError(f"{folder} is in use by another run (process {owner}); wait for it to finish or "
                             f"choose another --out") from None
    previous = _read_owner(fd)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = [fd, 1]
    try:
        for line in ([f"a lock of process {previous} was stale (that run is gone)"]
                     if previous not in ("unknown", str(os.getpid())) else []) + clean_debris(folder):
            (log or print)(f"note: {folder}: {line}")
        yield folder
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            del _held[key]
            os.ftruncate(fd, 0)                            # a finished run leaves no pid: only a killed one does
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def saved_step(checkpoint: Path) -> str:
    """The step a training checkpoint folder holds, for messages ("?" when it cannot be read)."""
    try:
        return str(json.loads((checkpoint / TRAINER_STATE_NAME).read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return "?"


def refuse_to_clobber(folder, name: str, resume: bool, overwrite: bool, resume_flag: str = "--resume") -> None:
    """A fresh run (neither ``resume`` nor ``overwrite``) must not replace ``folder/name`` (or its ``.old``)."""
    folder = Path(folder)
    if resume or overwrite:
        return
    for existing in (folder / name, folder / f".{name}.old"):
        if existing.is_dir() and any(existing.iterdir()):
            step = saved_step(existing)
            held = f" (step {step})" if step != "?" else ""
            how = f"pass {resume_flag} to continue it or " if resume_flag else ""
            raise RunFolderError(f"{folder} already holds a checkpoint{held} in {existing.name}/; {how}"
                                 f"--overwrite to replace it, or choose another --out")
