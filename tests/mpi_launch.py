"""The MPI launcher the tests use, and the one skip when there is none (a real environmental limit)."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from bert_from_scratch.distributed.world import INSTALL_HINT

# the launcher of the MPI mpi4py was installed with (the mpich wheel puts it next to python), else one on PATH
MPIEXEC = (str(Path(sys.executable).parent / "mpiexec") if (Path(sys.executable).parent / "mpiexec").exists()
           else shutil.which("mpiexec"))
try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False

needs_mpi = pytest.mark.skipif(not (HAVE_MPI4PY and MPIEXEC), reason=f"needs mpi4py and mpiexec: {INSTALL_HINT}")


def rank_reports(stdout: str) -> list[dict]:
    """Every JSON object the ranks printed, in order. mpiexec forwards each rank's output as it comes, so one
    rank's object can land on the same line as another's before its own newline arrives ("{...}{...}\\n\\n", as
    seen once in CI); reading object by object rather than line by line does not depend on that."""
    decoder, reports, at = json.JSONDecoder(), [], stdout.find("{")
    while at != -1:
        try:
            obj, end = decoder.raw_decode(stdout, at)
        except json.JSONDecodeError:
            end = at + 1                                       # a brace in other output, not a report
        else:
            if isinstance(obj, dict):
                reports.append(obj)
        at = stdout.find("{", end)
    return reports
