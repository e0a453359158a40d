"""The MPI launcher the tests use, and the one skip when there is none (a real environmental limit)."""
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
