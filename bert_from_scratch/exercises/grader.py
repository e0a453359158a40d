r"""Grade the chapter exercises: import a learner's file, run each part's check, say what is wrong.

::

    bert-from-scratch check 3                    # grades chapters/exercises/ch03_attention.py
    bert-from-scratch check 3 --file my_ch03.py  # another file
    bert-from-scratch check 3 --solutions        # the reference solutions (they pass)
    python -m bert_from_scratch.exercises check 3   # the same, without the console script

The exercise files are found in ``$BERT_FROM_SCRATCH_EXERCISES`` (a folder) when set, else in
``chapters/exercises/`` of the repository (an editable install) or of the current directory.

Every part prints one line, ``PASS`` or ``FAIL`` with the reason: backward passes are graded with
the finite-difference gradient checker (:mod:`bert_from_scratch.nn.gradcheck`), forward passes by
comparison with the package's own reference, the masking recipe by statistics over thousands of
sequences. Where a common mistake can be recognised (a missing ``1/sqrt(d)``, ``dW[ids] += dy``,
a forgotten residual gradient ...) the message names it.

Beyond the values, every check probes the classes of bugs a fixed float64 input hides: the
learner's functions get READ-ONLY arrays (:func:`frozen`, :func:`freeze`: a write into an input
or into a cache raises, and the report says "do not modify your inputs in place"), float32 inputs
must give float32 outputs where the package's layers keep the dtype (:func:`expect_dtype`),
softmax-like functions are fed scores ~1000 (:data:`STABILITY_HINT` names the row-max shift), and
the edge cases the docstrings promise (every label -100, an absent class ...) are called.
"""
from __future__ import annotations

import importlib.util
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np

from ..nn.gradcheck import gradcheck

ENV_FOLDER = "BERT_FROM_SCRATCH_EXERCISES"


class Wrong(AssertionError):
    """A part's check failed; the message says what is wrong (and, when known, why)."""


class ExerciseError(ValueError):
    """A chapter that does not exist, or an exercise file that cannot be found or imported."""


# =======================================================================================
# Helpers for the checks (``checks_data.py``, ``checks_model.py``, ``checks_training.py``)
# =======================================================================================
def as_array(what: str, value) -> np.ndarray:
    if value is None:
        raise Wrong(f"{what} is None: did you forget a `return`?")
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise Wrong(f"{what} is not an array of numbers ({type(value).__name__}): {e}") from None


def expect_shape(what: str, got, shape) -> np.ndarray:
    got = as_array(what, got)
    if got.shape != tuple(shape):
        raise Wrong(f"{what} has shape {got.shape}; expected {tuple(shape)}")
    return got


def expect_close(what: str, got, want, rtol: float = 1e-6, atol: float = 1e-9,
                 variants: dict | None = None, nonfinite: str = "") -> str:
    """``got`` must equal ``want`` to ``rtol``/``atol``; ``variants`` maps a diagnosis to what a
    typical wrong answer returns (the first one ``got`` matches is named in the message);
    ``nonfinite`` is the hint when ``got`` holds NaN or inf where ``want`` is finite."""
    want = np.asarray(want, dtype=np.float64)
    got = expect_shape(what, got, want.shape)
    bad = ~np.isfinite(got) & ~((got == want) & ~np.isnan(want))    # an expected -inf may be -inf
    if np.any(bad):
        raise Wrong(f"{what} holds NaN or inf" + (f": {nonfinite}" if nonfinite else ""))
    with np.errstate(invalid="ignore"):
        diff = np.where(got == want, 0.0, np.abs(got - want))
    if np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
        return f"max abs error {float(diff.max()) if got.size else 0.0:.1e}"
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
    msg = (f"{what} is wrong: max abs error {float(diff.max()):.3g} at index {tuple(int(i) for i in idx)} "
           f"(got {float(got[idx]):.9g}, expected {float(want[idx]):.9g})")
    for diagnosis, variant in (variants or {}).items():
        variant = np.asarray(variant, dtype=np.float64)
        if variant.shape == got.shape and np.allclose(got, variant, rtol=rtol, atol=atol):
            msg += f". Looks like: {diagnosis}"
            break
    raise Wrong(msg)


STABILITY_HINT = ("exp overflows for large scores (~1000): subtract the row maximum before exp, "
                  "softmax(x) = exp(x - max(x)) / sum(exp(x - max(x))) row by row, and "
                  "logsumexp(x) = max(x) + log(sum(exp(x - max(x))))")
READ_ONLY_HINT = ("do not modify your inputs in place; copy first (`x = x.copy()`) or build a new array "
                  "(`y = x * 2`, not `x *= 2`): the caller, and a backward's cache, still need the original values")


def frozen(*arrays):
    """Read-only copies of ``arrays`` (one array, or a tuple of them): a learner's function that
    writes into one raises ``ValueError: ... read-only``, which :func:`grade` reports with
    :data:`READ_ONLY_HINT`."""
    out = []
    for a in arrays:
        a = np.array(a, copy=True)
        a.setflags(write=False)
        out.append(a)
    return out[0] if len(out) == 1 else tuple(out)


def freeze(obj, _depth: int = 0):
    """Make every array in ``obj`` (an array, or tuples / lists / dicts of them: a cache) read-only,
    in place; returns ``obj``. A backward that writes into its cache then raises."""
    if isinstance(obj, np.ndarray):
        obj.setflags(write=False)
    elif _depth < 4 and isinstance(obj, (tuple, list)):
        for x in obj:
            freeze(x, _depth + 1)
    elif _depth < 4 and isinstance(obj, dict):
        for x in obj.values():
            freeze(x, _depth + 1)
    return obj


def expect_dtype(what: str, got, dtype=np.float32) -> None:
    """``got`` must be an array of ``dtype`` (float32 in, float32 out, as the package's layers)."""
    dtype = np.dtype(dtype)
    have = getattr(got, "dtype", None)
    if have != dtype:
        raise Wrong(f"{what} has dtype {have if have is not None else type(got).__name__} for {dtype.name} "
                    f"inputs; expected {dtype.name}: keep the inputs' dtype (np.zeros / np.full / np.eye without "
                    f"dtype=..., np.float64 constants or an integer mask in the arithmetic promote to float64; "
                    f"use dtype=x.dtype, x.dtype.type(c), .astype(x.dtype) or plain Python floats)")


def expect_gradients(what: str, f: Callable[[], float], inputs: dict, analytic: dict,
                     hints: dict | None = None, tol: float = 1e-6, max_entries: int = 60,
                     variants: dict | None = None) -> str:
    """Gradient check of ``analytic`` (name -> your gradient) against central differences of ``f``.

    ``hints`` maps a tensor name to what to look at when that tensor's gradient is wrong;
    ``variants`` maps a tensor name to ``{diagnosis: the gradient a typical mistake gives}``: a
    matching diagnosis is named instead of the hint."""
    for name, x in inputs.items():
        expect_shape(f"{what}: the gradient of {name}", analytic.get(name), x.shape)
    report = gradcheck(f, inputs, {k: np.asarray(v, dtype=np.float64) for k, v in analytic.items()},
                       tol=tol, max_entries=max_entries)
    if report.ok:
        return f"gradient check passed (worst relative error {report.worst.rel_error:.1e})"
    parts = []
    for c in report.failures():
        text = f"{c.name} (relative error {c.rel_error:.2g}, worst at index {c.worst_index})"
        mine = np.asarray(analytic[c.name], dtype=np.float64)
        match = [d for d, g in (variants or {}).get(c.name, {}).items()
                 if np.shape(g) == mine.shape and np.allclose(mine, g, rtol=1e-6, atol=1e-9)]
        if match:
            text += f" -- looks like: {match[0]}"
        elif hints and c.name in hints:
            text += f" -- {hints[c.name]}"
        parts.append(text)
    raise Wrong(f"{what}: gradient check failed for " + "; ".join(parts))


def get_function(module: ModuleType, name: str) -> Callable:
    fn = getattr(module, name, None)
    if fn is None:
        raise Wrong(f"no function `{name}` in {getattr(module, '__file__', module.__name__)}")
    if not callable(fn):
        raise Wrong(f"`{name}` in {getattr(module, '__file__', module.__name__)} is not a function")
    return fn


def call_pair(module: ModuleType, name: str, *args):
    """Call a ``*_forward`` that must return ``(out, cache)``."""
    result = get_function(module, name)(*args)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise Wrong(f"`{name}` must return a pair (out, cache); got {type(result).__name__}")
    return result


def fixed_rng(seed: int = 0) -> np.random.Generator:
    """A generator with a fixed seed: a check sees the same inputs on every run."""
    return np.random.default_rng(seed)


# =======================================================================================
# Chapters, parts, results
# =======================================================================================
@dataclass
class Part:
    """One gradable piece of a chapter: ``check(module) -> str`` returns a success note or raises ``Wrong``."""
    name: str
    functions: tuple
    check: Callable[[ModuleType], str]


@dataclass
class Chapter:
    number: int
    slug: str                 # the stub is chapters/exercises/chNN_<slug>.py
    title: str
    parts: list

    @property
    def file_name(self) -> str:
        return f"ch{self.number:02d}_{self.slug}.py"


@dataclass
class PartResult:
    part: str
    ok: bool
    message: str
    status: str = ""          # "PASS", "FAIL" or "TODO" (still raises NotImplementedError)

    def __post_init__(self):
        if not self.status:
            self.status = "PASS" if self.ok else "FAIL"


@dataclass
class GradeReport:
    chapter: int
    title: str
    source: str
    results: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def result(self, part: str) -> PartResult:
        for r in self.results:
            if r.part == part:
                return r
        raise KeyError(f"chapter {self.chapter} has no part {part!r}; parts: {[r.part for r in self.results]}")

    def __str__(self) -> str:
        width = max([len(r.part) for r in self.results] + [8])
        lines = [f"Chapter {self.chapter}: {self.title}  ({self.source})"]
        for r in self.results:
            label = "FAIL" if r.status == "TODO" else r.status
            lines.append(f"  {label}  {r.part:<{width}}  {r.message}")
        n_ok = sum(r.ok for r in self.results)
        lines.append(f"{n_ok}/{len(self.results)} parts pass" + ("" if self.ok else
                     " -- fix the first FAIL above, then run the check again"))
        return "\n".join(lines)


def _registry() -> dict:
    from .checks import CHAPTERS

    return CHAPTERS


def chapters() -> dict:
    """number -> :class:`Chapter` for every chapter with exercises."""
    return _registry()


def get_chapter(number) -> Chapter:
    registry = _registry()
    try:
        n = int(number)
    except (TypeError, ValueError):
        raise ExerciseError(f"chapter must be a number 1..{max(registry)}; got {number!r}") from None
    if n not in registry:
        raise ExerciseError(f"there is no chapter {n} with exercises; chapters: {', '.join(map(str, sorted(registry)))}")
    return registry[n]


# =======================================================================================
# Finding and importing the learner's file
# =======================================================================================
def exercises_folder() -> Path:
    """Where the stubs live: ``$BERT_FROM_SCRATCH_EXERCISES``, the repository's or the cwd's ``chapters/exercises``."""
    env = os.environ.get(ENV_FOLDER)
    if env:
        folder = Path(env).expanduser()
        if not folder.is_dir():
            raise ExerciseError(f"${ENV_FOLDER} is {env!r}, which is not a folder")
        return folder
    candidates = [Path(__file__).resolve().parents[2] / "chapters" / "exercises",
                  Path.cwd() / "chapters" / "exercises", Path.cwd() / "exercises"]   # the last: from chapters/
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise ExerciseError("cannot find the exercise files (chapters/exercises/): run from the repository root, "
                        f"set ${ENV_FOLDER} to the folder, or pass --file PATH")


def exercise_file(number) -> Path:
    chapter = get_chapter(number)
    return exercises_folder() / chapter.file_name


def load_module(path) -> ModuleType:
    """Import a Python file as a fresh module (re-read on every call, so edits are picked up)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ExerciseError(f"exercise file {path} does not exist")
    name = f"_bert_exercise_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ExerciseError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a syntax error or a failing import in the learner's file
        raise ExerciseError(f"importing {path} failed: {type(e).__name__}: {e}") from None
    return module


def _where(exc: BaseException, source: str) -> str:
    """' (file.py, line N)' for the innermost frame of the exception inside the learner's file."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if source and Path(f.filename).name == Path(source).name]
    if frames:
        return f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno}: {frames[-1].line})"
    return ""


# =======================================================================================
# Grading
# =======================================================================================
def grade(chapter, module=None, file=None, verbose: bool = True) -> GradeReport:
    """Grade chapter ``chapter`` on ``module`` (a module object), or on ``file``, or on the stub file.

    Returns a :class:`GradeReport` (``.ok``, ``.exit_code``, ``.results``); prints it when ``verbose``.
    """
    ch = get_chapter(chapter)
    if module is None:
        path = Path(file) if file is not None else exercise_file(ch.number)
        module = load_module(path)
    source = str(getattr(module, "__file__", None) or getattr(module, "__name__", "module"))
    report = GradeReport(ch.number, ch.title, source)
    for part in ch.parts:
        np.random.seed(0)                     # a learner's stray np.random call cannot make grading flaky
        try:
            note = part.check(module)
            report.results.append(PartResult(part.name, True, note))
        except NotImplementedError:
            report.results.append(PartResult(part.name, False, "not implemented yet (still raises "
                                             "NotImplementedError)", status="TODO"))
        except Wrong as e:
            report.results.append(PartResult(part.name, False, str(e)))
        except ValueError as e:
            if "read-only" not in str(e):           # not a write into one of the grader's read-only arrays
                report.results.append(PartResult(part.name, False,
                                                 f"raised ValueError: {e}{_where(e, source)}"))
            else:
                report.results.append(PartResult(part.name, False, f"writes into an array it was given "
                                                 f"(ValueError: {e}){_where(e, source)}: {READ_ONLY_HINT}"))
        except Exception as e:  # the learner's code crashed: say where
            report.results.append(PartResult(part.name, False,
                                             f"raised {type(e).__name__}: {e}{_where(e, source)}"))
    if verbose:
        print(report)
    return report


def solutions_module() -> ModuleType:
    from . import solutions

    return solutions


# =======================================================================================
# Command line: `bert-from-scratch check N` (the package CLI calls these) and
# `python -m ...exercises check N`
# =======================================================================================
