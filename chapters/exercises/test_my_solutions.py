"""Grade YOUR exercise files with pytest:  pytest chapters/exercises            (every chapter)
                                          pytest chapters/exercises -m ch03    (one chapter)

The same checks as ``bert-from-scratch check N``; a failing part shows the grader's report.
(Not part of the project's test suite: ``testpaths`` is ``tests/``, where the graders themselves are tested.)
"""
import pytest

from bert_from_scratch.exercises import chapters, grade


@pytest.mark.parametrize("chapter", [pytest.param(n, marks=getattr(pytest.mark, f"ch{n:02d}"), id=f"ch{n:02d}")
                                     for n in sorted(chapters())])
def test_chapter(chapter):
    report = grade(chapter, verbose=False)
    assert report.ok, "\n" + str(report)
