"""``bert-from-scratch bench``: the benchmarks (``bert_from_scratch/bench/``) print tables."""
from __future__ import annotations

import argparse
import importlib

from .common import command
from .process import keep_freed_memory

BENCHES = {"train-step": "bert_from_scratch.bench.train_step", "attention": "bert_from_scratch.bench.attention",
           "distributed": "bert_from_scratch.bench.distributed", "heads-rows": "bert_from_scratch.bench.heads_rows",
           "linear-backward": "bert_from_scratch.bench.linear_backward"}


def add_bench_arguments(p):
    p.add_argument("what", choices=sorted(BENCHES), help="train-step: a training step (or forward+backward) vs torch; "
                                                         "attention: the attention kernels; distributed: data-parallel "
                                                         "steps on 1, 2 ... MPI ranks; heads-rows: a fine-tuning "
                                                         "step with the last layer at [CLS] only vs every row; "
                                                         "linear-backward: dx and dW one after the other vs "
                                                         "side by side")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark (see --help after it)")


@command
def cli_bench(args) -> int:
    """``bert-from-scratch bench WHAT ...``: hands the rest of the command line to that benchmark's main()."""
    keep_freed_memory()
    module = importlib.import_module(BENCHES[args.what])
    return module.main(args.rest) or 0
