"""The one error path of every command: a user error is one line on stderr and exit status 2.

``@command`` wraps a command's function (``args -> exit status``): errors a user can cause
(a missing file, a bad option, a corrupt checkpoint, an unreachable package index) become
``bert-from-scratch: error: <what is wrong>``, never a traceback. Commands raise; only this
module prints errors.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

from ..data.fetch import FetchError

#: errors a user can cause; every error class of the package that a user can cause is a ValueError
#: (ConfigError, CheckpointError, CorpusError, FinetuneError, PretrainedError, ...)
USER_ERRORS = (ValueError, FetchError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)
PREFIX = "bert-from-scratch: error: "


def error(message: str) -> int:
    """Print the one line and return exit status 2."""
    print(PREFIX + message, file=sys.stderr)
    return 2


def missing_checkpoint(folders) -> str | None:
    """The one-line message for the first ``--checkpoint`` folder that does not exist, or None."""
    for folder in folders:
        if not Path(folder).exists():
            return f"--checkpoint {folder}: no such folder"
    return None


def describe(e: BaseException) -> str:
    """One line for an exception: an OSError names the file and the reason."""
    if isinstance(e, OSError) and getattr(e, "filename", None):
        return f"{e.filename}: {e.strerror or e}"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def command(run):
    """Decorate ``run(args) -> int``: user errors -> one line + 2; Ctrl-C -> "interrupted" + 130."""
    @functools.wraps(run)
    def wrapped(args) -> int:
        try:
            return int(run(args) or 0)
        except USER_ERRORS as e:
            return error(describe(e))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    return wrapped
