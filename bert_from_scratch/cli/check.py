"""``bert-from-scratch check N``: grade a chapter's exercises (the graders are in ``bert_from_scratch/exercises``)."""
from __future__ import annotations

import argparse

from ..exercises.grader import ExerciseError, chapters, get_chapter, grade, solutions_module
from .common import command


def add_check_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("chapter", help="chapter number (1-15), or 'all'")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--file", default=None, help="grade this file instead of chapters/exercises/chNN_*.py")
    group.add_argument("--solutions", action="store_true", help="grade the reference solutions (they pass)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    return parser


@command
def cli_check(args) -> int:
    """Run the grader for ``args.chapter``; 0 when every part passes, 1 when one fails, 2 on a usage error."""
    if str(args.chapter).lower() == "all":
        if args.file:
            raise ExerciseError("--file grades one chapter; give its number instead of 'all'")
        numbers = sorted(chapters())
    else:
        numbers = [get_chapter(args.chapter).number]
    worst = 0
    for n in numbers:
        module = solutions_module() if args.solutions else None
        report = grade(n, module=module, file=args.file, verbose=not args.quiet)
        if args.quiet:
            print(f"chapter {n:2d}: {sum(r.ok for r in report.results)}/{len(report.results)} parts pass")
        worst = max(worst, report.exit_code)
        if len(numbers) > 1 and not args.quiet:
            print()
    return worst
