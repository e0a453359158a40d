"""``python -m bert_from_scratch.exercises check N [--file F | --solutions]`` and ``... strip NOTEBOOKS``."""
from __future__ import annotations

import argparse

from ..cli.check import add_check_arguments, cli_check
from ..cli.common import describe, error
from .notebooks import is_stripped, strip_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bert_from_scratch.exercises")
    sub = parser.add_subparsers(dest="command", required=True)
    add_check_arguments(sub.add_parser("check", help="grade a chapter's exercises"))
    strip = sub.add_parser("strip", help="remove outputs and execution counts from notebooks, in place")
    strip.add_argument("notebooks", nargs="+")
    strip.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is not stripped")
    args = parser.parse_args(argv)
    if args.command == "check":
        return cli_check(args)
    status = 0
    for path in args.notebooks:
        try:
            if args.check:
                if not is_stripped(path):
                    print(f"{path}: has outputs or is not in canonical form "
                          f"(run: python -m bert_from_scratch.exercises strip {path})")
                    status = 1
            elif strip_file(path):
                print(f"stripped {path}")
        except (OSError, ValueError) as e:
            status = error(describe(e))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
