"""Chapter exercises: graders (``grader.py``, ``checks.py``) and reference solutions (``solutions.py``).

The learner edits ``chapters/exercises/chNN_*.py`` and runs ``bert-from-scratch check N``
(or ``python -m bert_from_scratch.exercises check N``). See ``chapters/README.md``.
"""
from .grader import (ExerciseError, GradeReport, PartResult, add_check_arguments, chapters, cli_check,
                     exercise_file, grade, load_module)
from .notebooks import strip_notebook

__all__ = ["grade", "GradeReport", "PartResult", "ExerciseError", "chapters", "exercise_file", "load_module",
           "add_check_arguments", "cli_check", "strip_notebook"]
