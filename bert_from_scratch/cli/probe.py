"""``bert-from-scratch probe``: linear probes on frozen features (see training/probe.py)."""
from __future__ import annotations

import argparse

from ..training.presets import BASE
from .common import command, error, missing_checkpoint
from .pretrain import corpus_problem
from .process import keep_freed_memory


def add_probe_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--checkpoint", action="append", default=[], metavar="FOLDER",
                   help="a pretraining run or checkpoint folder (repeatable); each is probed with its random-init twin")
    p.add_argument("--out", default="runs/probe", help="folder for probe.json")
    p.add_argument("--dataset", default="rotten_tomatoes", choices=("rotten_tomatoes", "bbc"))
    p.add_argument("--max-train-examples", type=int, default=None, help="a seeded subset (default: all)")
    p.add_argument("--no-minilm", action="store_true", help="leave out the all-MiniLM-L6-v2 row")
    p.add_argument("--count-vectors", nargs="?", const=BASE["corpus"], default=None, metavar="CORPUS",
                   help="add, for each checkpoint, a row of count-based vectors (PPMI-SVD) of CORPUS in its "
                        "vocabulary and width: what the text alone holds (default CORPUS: the main job's, "
                        f"{BASE['corpus']}; a --corpus value of pretrain)")
    p.add_argument("--overwrite", action="store_true", help="replace the probe.json an earlier run left in --out")
    return p


@command
def cli_probe(args) -> int:
    from ..training.probe import run_probe

    keep_freed_memory()
    if missing_checkpoint(args.checkpoint):
        return error(missing_checkpoint(args.checkpoint))
    if not args.checkpoint and args.no_minilm:
        return error("nothing to probe: give --checkpoint, or leave out --no-minilm")
    if args.count_vectors is not None and not args.checkpoint:
        return error("--count-vectors needs a --checkpoint (its vocabulary and width)")
    if args.count_vectors is not None and corpus_problem(args.count_vectors):
        return error(corpus_problem(args.count_vectors))
    if args.max_train_examples is not None and args.max_train_examples < 2:
        return error(f"--max-train-examples must be at least 2; got {args.max_train_examples}")
    run_probe(args.checkpoint, args.out, minilm=not args.no_minilm, dataset=args.dataset,
              max_train_examples=args.max_train_examples, overwrite=args.overwrite,
              count_vectors=args.count_vectors)
    return 0
