"""``bert-from-scratch transfer``: the table that says whether pretraining helps (see training/transfer.py)."""
from __future__ import annotations

import argparse

from ..model.heads import POOLINGS
from .common import command, error, missing_checkpoint
from .process import keep_freed_memory


def _floats(text: str) -> tuple:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"learning rates must be positive, got {text!r}")
    return values


FREEZE_CHOICES = {"no": (False,), "yes": (True,), "tune": (False, True)}


def _ints(text: str) -> tuple:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_transfer_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.description = ("Fine-tune random init, each --checkpoint and all-MiniLM-L6-v2 on Rotten Tomatoes with the "
                     "same protocol (learning rate tuned on dev, several seeds) and print the test table with "
                     "intervals and the gain over random init.")
    p.add_argument("--checkpoint", action="append", default=[], metavar="FOLDER",
                   help="a pretraining run or checkpoint folder (repeat for several rows); random init copies the "
                        "first one's architecture and vocabulary")
    p.add_argument("--out", default="runs/transfer", help="folder for the runs and transfer.json")
    p.add_argument("--lrs", type=_floats, default=None, help="learning-rate grid (default 1e-4,3e-4,1e-3,3e-3)")
    p.add_argument("--seeds", type=_ints, default=None, help="seeds at the tuned rate (default 0,1,2)")
    p.add_argument("--epochs", type=int, default=None, help="at most this many epochs (default 10)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop a run after this many epochs without a better dev accuracy (default 3); with a few "
                        "hundred examples an epoch is a few steps, so a slow start can end a run at the majority "
                        "class: give --patience as large as --epochs to keep every epoch's chance")
    p.add_argument("--max-train-examples", type=int, default=None, help="a seeded subset (default: all 10,201)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the table (and redo the fine-tunings) an earlier run left in --out")
    p.add_argument("--resume", action="store_true",
                   help="reuse the fine-tunings an earlier run into --out finished with the same settings and run "
                        "the rest (a stopped table, or more --seeds or --lrs); a run made with other settings is "
                        "refused")
    p.add_argument("--no-minilm", action="store_true", help="leave out the all-MiniLM-L6-v2 row")
    p.add_argument("--tune-on-all-seeds", action="store_true",
                   help="choose each row's learning rate on the mean dev accuracy of every seed, not seed 0's "
                        "(every seed at every rate: seeds x the tuning runs)")
    p.add_argument("--classifier-first", type=int, default=None, metavar="EPOCHS",
                   help="every run first trains the classifier alone on the frozen encoder's features for EPOCHS "
                        "epochs, then fine-tunes everything (LP-FT; default 0: plain fine-tuning)")
    p.add_argument("--freeze-word-embeddings", choices=tuple(FREEZE_CHOICES), default=None,
                   help="whether fine-tuning updates the word embeddings: 'no' (default), 'yes', or 'tune': each "
                        "row runs its grid both ways and keeps the better on dev (for checkpoints pretrained over "
                        "frozen word vectors, --preset long-frozen)")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="what every row's classifier reads: 'cls' (default; the pooler's output, as Hugging Face) "
                        "or 'mean' (the last layer's mean over the real tokens, as Sentence-BERT)")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test size: 200 examples, 1 epoch, 1 learning rate, 2 seeds (numbers mean nothing)")
    return p


@command
def cli_transfer(args) -> int:
    from ..training.transfer import Protocol, run_transfer

    keep_freed_memory()
    if missing_checkpoint(args.checkpoint):
        return error(missing_checkpoint(args.checkpoint))
    p = Protocol.quick() if args.quick else Protocol()
    for name, value in (("lrs", args.lrs), ("seeds", args.seeds), ("epochs", args.epochs),
                        ("patience", args.patience), ("max_train_examples", args.max_train_examples),
                        ("classifier_first", args.classifier_first), ("pooling", args.pooling)):
        if value is not None:
            setattr(p, name, value)
    p.tune_on_all_seeds = args.tune_on_all_seeds
    if args.freeze_word_embeddings is not None:
        p.freeze_word_embeddings = FREEZE_CHOICES[args.freeze_word_embeddings]
    for flag, value, low in (("--epochs", p.epochs, 1), ("--patience", p.patience, 1),
                             ("--classifier-first", p.classifier_first, 0)):
        if value < low:
            return error(f"{flag} must be at least {low}; got {value}")
    run_transfer(args.checkpoint, args.out, p, minilm=not args.no_minilm, overwrite=args.overwrite, resume=args.resume)
    return 0
