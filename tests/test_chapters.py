"""The chapter notebooks: committed without outputs, one per chapter with its exercise file, and each one
runs top to bottom from a clean kernel without an error (nbclient, the ``python3`` kernel, ``MPLBACKEND=Agg``).

The execution tests are marked ``slow`` (all twelve take a few minutes on 2 cores) and ``chNN``.
"""
from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path

import pytest

from bert_from_scratch.exercises import chapters
from bert_from_scratch.exercises.notebooks import is_stripped, notebook_text, strip_file, strip_notebook

CHAPTERS_DIR = Path(__file__).resolve().parents[1] / "chapters"
NOTEBOOKS = sorted(CHAPTERS_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 600


def notebook_param(path):
    n = int(path.name[:2])
    return pytest.param(path, marks=getattr(pytest.mark, f"ch{n:02d}"), id=path.stem)


def test_one_notebook_per_chapter_with_exercises():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(1, len(NOTEBOOKS) + 1)), [p.name for p in NOTEBOOKS]   # no gap, no repeat
    assert numbers == sorted(chapters()), "every chapter with exercises has its notebook, and the reverse"
    for path in NOTEBOOKS:
        n = int(path.name[:2])
        chapter = chapters()[n]
        assert (CHAPTERS_DIR / "exercises" / chapter.file_name).is_file()
        nb = json.loads(path.read_text(encoding="utf-8"))
        sources = ["".join(c["source"]) for c in nb["cells"]]
        assert sources[0].startswith(f"# Chapter {n} "), sources[0][:60]
        assert f"grade({n})" in sources[-1], f"{path.name} must end by grading its exercises"
        assert chapter.file_name in "".join(sources), f"{path.name} must name {chapter.file_name}"
        assert nb["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", [notebook_param(p) for p in NOTEBOOKS])
def test_committed_notebook_has_no_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, \
                f"{path.name} cell {i} has outputs: run python -m bert_from_scratch.exercises strip {path}"
    assert is_stripped(path), f"{path.name} is not in canonical form: python -m bert_from_scratch.exercises strip"


def test_strip_removes_outputs_and_the_check_notices(tmp_path):
    clean = json.loads(NOTEBOOKS[0].read_text(encoding="utf-8"))
    dirty = copy.deepcopy(clean)
    code = next(c for c in dirty["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hello\n"]}]
    code["execution_count"] = 7
    code["metadata"]["execution"] = {"iopub.status.busy": "2026-01-01"}
    path = tmp_path / "dirty.ipynb"
    path.write_text(json.dumps(dirty), encoding="utf-8")
    assert not is_stripped(path)
    assert strip_file(path) is True
    assert is_stripped(path) and strip_file(path) is False
    assert path.read_text(encoding="utf-8") == notebook_text(strip_notebook(clean))
    with pytest.raises(ValueError, match="not a Jupyter notebook"):
        strip_notebook({"nbformat": 4})


def test_strip_command_line(tmp_path, capsys):
    from bert_from_scratch.exercises.__main__ import main

    nb = json.loads(NOTEBOOKS[0].read_text(encoding="utf-8"))
    next(c for c in nb["cells"] if c["cell_type"] == "code")["execution_count"] = 3
    path = tmp_path / "x.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    assert main(["strip", "--check", str(path)]) == 1
    assert "not in canonical form" in capsys.readouterr().out
    assert main(["strip", str(path)]) == 0
    assert main(["strip", "--check", str(path)]) == 0
    (tmp_path / "bad.ipynb").write_text("{", encoding="utf-8")
    assert main(["strip", str(tmp_path / "bad.ipynb")]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("path", [notebook_param(p) for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[test]')")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[test]')")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -e '.[test]')")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(CHAPTERS_DIR)}})
    start = time.perf_counter()
    client.execute()                       # raises CellExecutionError, naming the cell, on any error
    elapsed = time.perf_counter() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "<-- WRONG" not in text                           # a gradient-check table with a wrong tensor
    assert re.search(r"Chapter \d+: .*\n(  (PASS|FAIL)  .*\n)+", text), "the final grading cell printed nothing"
    print(f"{path.name}: {elapsed:.1f} s")
    assert elapsed < 240, f"{path.name} took {elapsed:.0f} s; chapters must run in under ~2-3 minutes"
