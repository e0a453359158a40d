"""The package's layout rules, checked: short files, no import cycle, kernels/ a leaf, one training step.

Each check reads the source (no imports), so a violation names the file and the line.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bert_from_scratch"
KERNELS = ROOT / "kernels"
MAX_LINES = 400


def package_files():
    """Every Python file of the package and of kernels/ (the symlink bert_from_scratch/kernels counted once)."""
    files = [p for p in PACKAGE.rglob("*.py") if "kernels" not in p.relative_to(PACKAGE).parts]
    return files + sorted(KERNELS.glob("*.py"))


def module_name(path: Path) -> tuple[str, str]:
    """(module, package the module's relative imports start from)."""
    if path.parent == KERNELS:
        parts = ["bert_from_scratch", "kernels"] + ([] if path.stem == "__init__" else [path.stem])
        return ".".join(parts), "bert_from_scratch.kernels"
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def module_level_imports(path: Path) -> set[str]:
    """The package modules ``path`` imports when it is imported (imports inside functions run later)."""
    _, package = module_name(path)
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {target} | {f"{target}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bert_from_scratch"):
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_no_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in package_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_no_import_cycle():
    modules = {module_name(p)[0]: p for p in package_files()}
    graph = {m: {d for d in module_level_imports(p) if d in modules and d != m} for m, p in modules.items()}
    assert not import_cycles(graph)


def test_the_cycle_finder_finds_a_cycle():
    """The check above can fail: a planted cycle a -> b -> c -> a is found."""
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def imports_outside_kernels(source: str) -> list[str]:
    """Imports of a kernels/ module that reach into the package (anything but kernels/ itself and third parties)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.level > 1 or (node.module or "").startswith("bert_from_scratch")):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Import) and any(a.name.startswith("bert_from_scratch") for a in node.names):
            found.append(ast.unparse(node))
    return found


def test_kernels_are_a_leaf():
    """kernels/ imports nothing from the package (no import cycle)."""
    offending = {p.name: imports_outside_kernels(p.read_text(encoding="utf-8")) for p in KERNELS.glob("*.py")}
    assert not {name: found for name, found in offending.items() if found}


def test_the_leaf_check_finds_an_import_of_the_package():
    """The import the kernels had before (a planted one) is found; their own and third-party imports are not."""
    assert imports_outside_kernels("from ..attention import MASK_VALUE\n") == ["from ..attention import MASK_VALUE"]
    assert imports_outside_kernels("import bert_from_scratch.nn\n") == ["import bert_from_scratch.nn"]
    assert imports_outside_kernels("from .kernel_args import GOLDEN\nimport numpy as np\n") == []


def step_runners(source: str) -> list[str]:
    """Functions of ``source`` that call both ``....backward()`` and ``optimizer.step(...)``."""
    runners = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef):
            calls = {ast.unparse(c.func) for c in ast.walk(node) if isinstance(c, ast.Call)}
            if any(c.endswith(".backward") for c in calls) and any(c.endswith("optimizer.step") for c in calls):
                runners.append(node.name)
    return runners


def test_exactly_one_function_runs_a_training_step():
    """``model.backward()`` followed by ``optimizer.step(...)`` lives in training/loop.py's train_step only;
    every job trains through it (the benchmarks time forward+backward without an update)."""
    runners = [f"{p.relative_to(ROOT)}:{name}" for p in package_files()
               for name in step_runners(p.read_text(encoding="utf-8"))]
    assert runners == ["bert_from_scratch/training/loop.py:train_step"]


def test_the_step_finder_finds_a_second_loop():
    """The check above can fail: a job with its own step (a planted second loop) is found."""
    planted = "def my_loop(model, optimizer):\n    grads = model.backward()\n    optimizer.step(grads)\n"
    assert step_runners(planted) == ["my_loop"]
    assert step_runners("def bench(model):\n    model.backward()\n") == []
