"""``bert-from-scratch finetune`` and ``bert-from-scratch predict``: the command-line side of fine-tuning.

The job itself is :func:`~bert_from_scratch.training.finetuning.finetune`; the models come from
:mod:`~bert_from_scratch.training.classification_models`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from ..data.classification import FinetuneError
from ..data.held_out import warn_on_another_split
from ..model.heads import POOLINGS
from ..training.compile_ahead import start_if_enabled, wait_on_this_host
from ..training.classification_models import INIT_CHOICES, load_for_classification, predict
from ..training.finetuning import finetune
from .common import command
from .process import keep_freed_memory

DEFAULT_OUT = "runs/finetune"


DEFAULT_RT_SUBSET = 4000     # Rotten Tomatoes train examples used by default (of 10,201)


def add_finetune_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``bert-from-scratch finetune``."""
    parser.description = ("Fine-tune a BERT for sentence or sentence-pair classification. Default: "
                          "all-MiniLM-L6-v2 on Rotten Tomatoes sentiment (a few minutes on 2 cores).")
    parser.add_argument("--task", default="text-classification",
                        choices=("text-classification", "token-classification"),
                        help="text-classification (default) or token-classification (Brown corpus, universal "
                             "part-of-speech tags, split by document)")
    parser.add_argument("--init", default="minilm",
                        help="weights to start from: 'minilm' (all-MiniLM-L6-v2, default), a checkpoint folder "
                             "(e.g. runs/pretrain/checkpoint, holding vocab.txt), or 'random'")
    parser.add_argument("--like", default="minilm",
                        help="with --init random: copy the architecture and vocabulary of this model, 'minilm' "
                             "(default) or a checkpoint folder (its weights are not used)")
    parser.add_argument("--dataset", default="rotten_tomatoes", choices=("rotten_tomatoes", "bbc"),
                        help="built-in dataset with a fixed, seeded 80/10/10 split (default rotten_tomatoes)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the built-in dataset's train/dev/test split (default 0: the documented one, "
                             "whose dev and test text the pretraining corpora leave out; another seed warns when "
                             "--init is a checkpoint)")
    parser.add_argument("--train", metavar="CSV", help="your own training data: a CSV with columns text[,text_b],label")
    parser.add_argument("--dev", metavar="CSV", help="your own dev data (needed with --train)")
    parser.add_argument("--test", metavar="CSV", help="your own test data (optional)")
    parser.add_argument("--epochs", type=int, default=3, help="at most this many epochs (default 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step (default 32)")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    parser.add_argument("--warmup-ratio", type=float, default=0.1, help="share of steps for warmup (default 0.1)")
    parser.add_argument("--max-length", type=int, default=64, help="word pieces per example (default 64)")
    parser.add_argument("--max-train-examples", type=int, default=None,
                        help=f"train on a seeded random subset of this size (default: {DEFAULT_RT_SUBSET} for "
                             f"rotten_tomatoes, so that the default run stays within ~15 minutes on 2 cores; "
                             f"all of bbc and of your own CSV)")
    parser.add_argument("--max-eval-examples", type=int, default=None,
                        help="token-classification: score a seeded random subset of this many dev and test "
                             "sentences (default: all)")
    parser.add_argument("--all-train", action="store_true",
                        help="use the whole train split (rotten_tomatoes: all 10,201 examples)")
    parser.add_argument("--patience", type=int, default=1, help="early stop after this many epochs without gain")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch order, dropout and the new head")
    parser.add_argument("--classifier-first", type=int, default=0, metavar="EPOCHS",
                        help="first train the classifier alone on the frozen encoder's features for EPOCHS epochs, "
                             "then fine-tune everything (LP-FT; default 0: plain fine-tuning)")
    parser.add_argument("--freeze-word-embeddings", action="store_true",
                        help="never update the word embeddings (for a checkpoint pretrained over frozen word "
                             "vectors: pretrain --freeze-word-embeddings, --preset long-frozen)")
    parser.add_argument("--pooling", choices=POOLINGS, default=None,
                        help="text-classification: what the classifier reads, 'cls' (the pooler's output, as Hugging "
                             "Face) or 'mean' (the last layer's mean over the real tokens, as Sentence-BERT); "
                             "default: the --init checkpoint's own, else 'cls'")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the best/ model an earlier run left in --out (refused otherwise)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _load_data(args):
    from ..data.labeled import ClassificationData, load_classification, read_classification_csv

    if args.train is None and args.dev is None and args.test is None:
        warn_on_another_split(args.dataset, args.split_seed, args.init)
        return load_classification(args.dataset, seed=args.split_seed)
    if args.train is None or args.dev is None:
        raise FinetuneError("--train and --dev go together: give both CSV files (and optionally --test)")
    train = read_classification_csv(args.train)
    if len(train.label_names) < 2:
        raise FinetuneError(f"{args.train}: all examples have the label {train.label_names[0]!r}; "
                            f"classification needs at least 2 labels")
    dev = read_classification_csv(args.dev, label_names=train.label_names)
    test = read_classification_csv(args.test, label_names=train.label_names) if args.test else None
    pair = [f.examples[0].text_b is not None for f in (train, dev, test) if f is not None]
    if len(set(pair)) > 1:
        raise FinetuneError("the CSV files disagree: some have a text_b column (sentence pairs), some do not")
    name = Path(args.train).stem
    return ClassificationData(train.examples, dev.examples, test.examples if test else [], train.label_names, name)


@command
def cli_finetune(args) -> int:
    """``bert-from-scratch finetune``: 0 on success, 1 if training diverged, 2 for a usage error."""
    keep_freed_memory()
    if args.task == "token-classification":
        if args.pooling is not None:
            raise FinetuneError("--pooling is for text-classification: a token classifier reads every token")
        from .tasks import finetune_tokens
        return finetune_tokens(args)
    init = args.init if args.init in INIT_CHOICES else Path(args.init)
    if not isinstance(init, str) and not init.exists():
        raise FinetuneError(f"--init {args.init}: not 'minilm', 'random' or an existing checkpoint folder")
    compiling = start_if_enabled()                # the Numba kernels compile while data and weights load
    with compiling or contextlib.nullcontext():
        data = _load_data(args)
        max_train = args.max_train_examples
        if args.all_train:
            max_train = None
        elif max_train is None and args.train is None and args.dataset == "rotten_tomatoes":
            max_train = DEFAULT_RT_SUBSET
        model, tokenizer = load_for_classification(init if isinstance(init, str) else str(init),
                                                   num_labels=len(data.label_names), seed=args.seed,
                                                   like=args.like, log=print, pooling=args.pooling)
        wait_on_this_host(compiling, print)
    run_info = {"init": str(args.init), "like": args.like if args.init == "random" else None,
                "dataset": data.name, "split_seed": args.split_seed}
    result = finetune(model, tokenizer, data, args.out, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr,
                      warmup_ratio=args.warmup_ratio, max_length=args.max_length, patience=args.patience,
                      seed=args.seed, max_train_examples=max_train, progress=not args.no_progress,
                      log=print, run_info=run_info, overwrite=args.overwrite, classifier_first=args.classifier_first,
                      freeze_word_embeddings=args.freeze_word_embeddings)
    print(f"best epoch {result.best_epoch}: dev accuracy {result.best_dev_accuracy}, dev macro-F1 "
          f"{result.best_dev_macro_f1}" if result.best_epoch else "no epoch finished")
    if result.test_accuracy is not None:
        print(f"test accuracy {result.test_accuracy:.4f}  test macro-F1 {result.test_macro_f1:.4f}")
    print(f"checkpoint: {result.checkpoint_dir}  confusion matrix: {result.confusion_matrix_path}  "
          f"({result.seconds:.0f} s)")
    return 1 if result.diverged else 0


def add_predict_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``bert-from-scratch predict``."""
    parser.description = "Classify texts with a fine-tuned checkpoint: prints the label and the probabilities."
    parser.add_argument("--checkpoint", required=True,
                        help="the fine-tuned model: a run folder (runs/finetune) or its best/ folder")
    parser.add_argument("texts", nargs="+", help="text(s) to classify")
    parser.add_argument("--pair", action="append", default=None, metavar="TEXT_B",
                        help="second sentence of a pair task, once per text, in order")
    parser.add_argument("--json", action="store_true", help="print one JSON object per text")
    parser.add_argument("--task", default="text-classification",
                        choices=("text-classification", "sentiment-analysis", "token-classification", "ner",
                                 "fill-mask", "question-answering", "feature-extraction"),
                        help="what to predict, through bert_from_scratch.pipeline (default text-classification: "
                             "a fine-tuned classifier's label); prints one JSON object per text")
    parser.add_argument("--context", help="question-answering: the text to find the answers in (texts = questions)")
    return parser


@command
def cli_predict(args) -> int:
    """``bert-from-scratch predict``: 0 on success, 2 for a usage error (one line on stderr)."""
    keep_freed_memory()
    if args.task not in ("text-classification", "sentiment-analysis"):
        from .tasks import predict_task
        return predict_task(args)
    results = predict(args.checkpoint, list(args.texts), args.pair)
    for text, (label, probs) in zip(args.texts, results):
        if args.json:
            print(json.dumps({"text": text, "label": label, "probabilities": probs}))
        else:
            shown = "  ".join(f"{name} {p:.3f}" for name, p in probs.items())
            print(f"{label}\t{shown}\t{text}")
    return 0
