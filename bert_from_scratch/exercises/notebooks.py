"""Keep the chapter notebooks reviewable in git: they are committed with their outputs stripped.

``python -m bert_from_scratch.exercises strip chapters/*.ipynb`` removes every output, execution
count and volatile metadata in place (like ``jupyter nbconvert --ClearOutputPreprocessor``, with
no dependency beyond the standard library); ``--check`` only reports which files are not clean
(exit status 1), which is what ``tests/test_chapters.py`` asserts for the committed files.
"""
from __future__ import annotations

import json
from pathlib import Path

#: notebook-level metadata keys that change from run to run or machine to machine
VOLATILE_METADATA = ("widgets", "varInspector", "toc", "execution")
#: cell-level metadata keys to drop
VOLATILE_CELL_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime", "heading_collapsed")


def strip_notebook(nb: dict) -> dict:
    """Return ``nb`` (a parsed .ipynb) without outputs, execution counts and volatile metadata."""
    if not isinstance(nb, dict) or "cells" not in nb:
        raise ValueError("not a Jupyter notebook: no 'cells' list")
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        for key in VOLATILE_CELL_METADATA:
            cell.get("metadata", {}).pop(key, None)
    for key in VOLATILE_METADATA:
        nb.get("metadata", {}).pop(key, None)
    return nb


def notebook_text(nb: dict) -> str:
    """The canonical text of a notebook file: 1-space indented JSON, keys sorted, final newline."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def is_stripped(path) -> bool:
    """True when the file at ``path`` is exactly what :func:`strip_file` would write."""
    text = Path(path).read_text(encoding="utf-8")
    return text == notebook_text(strip_notebook(json.loads(text)))


def strip_file(path) -> bool:
    """Strip one file in place; return True when it changed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        nb = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read notebook {path}: {e}") from None
    new = notebook_text(strip_notebook(nb))
    if new != text:
        path.write_text(new, encoding="utf-8")
        return True
    return False
