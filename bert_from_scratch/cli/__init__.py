"""The ``bert-from-scratch`` command.

    bert-from-scratch pretrain                 # the main job: a small BERT on 6.9M words of reviews and English
    bert-from-scratch distill                  # pretraining with a teacher (all-MiniLM-L6-v2)
    bert-from-scratch fill-mask --checkpoint runs/pretrain "the movie was [MASK]."
    bert-from-scratch attention "The cat sat on the mat." --layer 2 --out att.png
    bert-from-scratch finetune / predict       # sentence classification
    bert-from-scratch transfer --checkpoint runs/pretrain   # does pretraining help? (the table, with intervals)
    bert-from-scratch probe --checkpoint runs/pretrain      # is the task linearly readable from frozen features?
    bert-from-scratch check 3                  # grade the exercises of chapter 3
    bert-from-scratch bench train-step|attention

User errors (a missing file, a bad option, a corrupt checkpoint) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib

from .common import command

#: name -> (module, function adding the options, function running the command, help)
COMMANDS = {
    "pretrain": ("pretrain", "add_pretrain_arguments", "cli_pretrain",
                 "pretrain a small BERT from raw text (the main job)"),
    "distill": ("distill", "add_distill_arguments", "cli_distill",
                "pretraining with a teacher: a small student learns all-MiniLM-L6-v2's layers"),
    "fill-mask": ("fill_mask", "add_fill_mask_arguments", "cli_fill_mask", "top predictions for [MASK] tokens"),
    "attention": ("attention", "add_attention_arguments", "cli_attention",
                  "plot what a (pretrained) BERT attends to"),
    "finetune": ("finetune", "add_finetune_arguments", "cli_finetune", "fine-tune a sentence classifier"),
    "predict": ("finetune", "add_predict_arguments", "cli_predict", "classify text with a fine-tuned checkpoint"),
    "transfer": ("transfer", "add_transfer_arguments", "cli_transfer",
                 "does pretraining help? fine-tune each starting point the same way, print the test table"),
    "probe": ("probe", "add_probe_arguments", "cli_probe",
              "linear probes: how much of the task frozen features hold (a checkpoint, its random twin, MiniLM)"),
    "check": ("check", "add_check_arguments", "cli_check", "grade a chapter's exercises"),
    "bench": ("bench", "add_bench_arguments", "cli_bench", "benchmarks that print tables"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bert-from-scratch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, add_name, run_name, help_text) in COMMANDS.items():
        module = importlib.import_module("." + module_name, __name__)
        p = sub.add_parser(name, help=help_text)
        getattr(module, add_name)(p)
        p.set_defaults(run=getattr(module, run_name))
    return parser


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"{category.__name__}: {message}\n"


def main(argv=None) -> int:
    import warnings

    warnings.formatwarning = _one_line_warning      # a user sees the message, not a source line
    from ..distributed.world import end_every_rank_on_failure, quiet_other_ranks

    quiet_other_ranks()                             # under mpiexec: one report, rank 0's
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    status = command(args.run)(args)                # one error path, also for commands that bring their own
    end_every_rank_on_failure(status)               # under mpiexec: no rank left waiting for one that stopped
    return status


if __name__ == "__main__":
    raise SystemExit(main())
