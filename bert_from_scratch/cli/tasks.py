"""``bert-from-scratch finetune --task token-classification`` and ``predict --task ...``: the task commands.

``cli/finetune.py`` parses the options (they are shared with sentence classification) and hands
these tasks over here.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..data.classification import FinetuneError
from ..data.held_out import warn_on_another_split

DEFAULT_TRAIN_SENTENCES = 3000      # of 45,689: a default run of ~15 minutes on 2 cores (--all-train for all)
TASKS = ("text-classification", "token-classification", "fill-mask", "question-answering", "feature-extraction")


def finetune_tokens(args) -> int:
    """Fine-tune a tagger on the Brown corpus (universal part-of-speech tags); print the test report."""
    from ..data.brown import load_brown_pos
    from ..training.token_classification import finetune_tagger, load_for_token_classification

    if args.train or args.dev or args.test:
        raise FinetuneError("--task token-classification trains on the Brown corpus (universal POS tags); "
                            "CSV files (--train/--dev/--test) are for text classification")
    init = args.init
    if init not in ("minilm", "random") and not Path(init).exists():
        raise FinetuneError(f"--init {init}: not 'minilm', 'random' or an existing checkpoint folder")
    data = load_brown_pos(seed=args.split_seed)
    warn_on_another_split("brown_pos", args.split_seed, init)
    max_train = None if args.all_train else (args.max_train_examples or DEFAULT_TRAIN_SENTENCES)
    model, tokenizer = load_for_token_classification(init, len(data.label_names), seed=args.seed, like=args.like,
                                                     log=print)
    result = finetune_tagger(model, tokenizer, data, args.out, epochs=args.epochs, batch_size=args.batch_size,
                             lr=args.lr, warmup_ratio=args.warmup_ratio, max_length=args.max_length,
                             patience=args.patience, seed=args.seed, max_train_sentences=max_train,
                             max_eval_sentences=args.max_eval_examples, progress=not args.no_progress, log=print,
                             run_info={"init": str(init), "dataset": "brown_pos", "split_seed": args.split_seed},
                             overwrite=args.overwrite)
    if result.test is not None:
        t = result.test
        lo, hi = t["interval_95_document_bootstrap"]
        print(f"test word accuracy {t['accuracy']:.4f} [{lo:.4f}, {hi:.4f}]  majority-tag baseline "
              f"{t['majority_tag_baseline']['accuracy']:.4f}  ({t['words']} words)")
    print(f"checkpoint: {result.checkpoint_dir}  results: {result.results_path}  ({result.seconds:.0f} s)")
    return 1 if result.diverged else 0


def predict_task(args) -> int:
    """``predict --task T --checkpoint FOLDER texts...`` through :func:`bert_from_scratch.pipeline`."""
    from ..pipelines import pipeline

    pipe = pipeline(args.task, model=args.checkpoint)
    texts = list(args.texts)
    if args.task == "question-answering":
        if not args.context:
            raise FinetuneError("--task question-answering needs --context TEXT (the questions are the texts)")
        outputs = [pipe(question=q, context=args.context) for q in texts]
    else:
        outputs = pipe(texts)
    for text, out in zip(texts, outputs):
        if args.task == "feature-extraction":
            out = {"shape": [len(out[0]), len(out[0][0])]}
        print(json.dumps({"text": text, "output": out}))
    return 0
