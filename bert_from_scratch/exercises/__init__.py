"""Chapter exercises: graders (``grader.py``; ``checks.py`` lists the checks of every chapter, which
live in ``checks_data.py``, ``checks_model.py`` and ``checks_training.py``) and reference solutions
(``solutions.py``).

The learner edits ``chapters/exercises/chNN_*.py`` and runs ``bert-from-scratch check N``
(or ``python -m bert_from_scratch.exercises check N``; the command is ``cli/check.py``). See
``chapters/README.md``.
"""
from .grader import ExerciseError, GradeReport, PartResult, chapters, exercise_file, grade, load_module
from .notebooks import strip_notebook

__all__ = ["grade", "GradeReport", "PartResult", "ExerciseError", "chapters", "exercise_file", "load_module",
           "strip_notebook"]
