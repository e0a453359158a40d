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


def test_kernels_are_a_leaf():
    """kernels/ imports nothing from the package (no import cycle): every import there is relative to
    kernels/ itself or a third-party module."""
    import ast
    root = Path(__file__).resolve().parent.parent / "kernels"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path.name} imports from outside kernels/: {ast.unparse(node)}"
                assert not (node.module or "").startswith("bert_from_scratch"), f"{path.name}: {ast.unparse(node)}"
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("bert_from_scratch") for a in node.names), path.name


def test_exactly_one_function_runs_a_training_step():
    """``model.backward()`` followed by ``optimizer.step(...)`` lives in training/loop.py's train_step only;
    every job trains through it (the benchmarks time forward+backward without an update)."""
    runners = []
    for path in package_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef):
                calls = {ast.unparse(c.func) for c in ast.walk(node) if isinstance(c, ast.Call)}
                if any(c.endswith(".backward") for c in calls) and any(c.endswith("optimizer.step") for c in calls):
                    runners.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert runners == ["bert_from_scratch/training/loop.py:train_step"]
