"""Build the starting points of the transfer screens in docs/results.md ("Which part of pretraining costs the gain").

Each command writes a model folder that ``bert-from-scratch finetune --init OUT`` (or ``transfer --checkpoint
OUT``) reads. They change one piece of a checkpoint at a time, to see which piece fine-tuning gains or loses by:

    python docs/screens.py reinit SRC OUT REGEX        # tensors whose names match REGEX back to BERT's init
    python docs/screens.py scale-embeddings SRC OUT S  # word embeddings times S ('init': to BERT's init row norm)
    python docs/screens.py counts-alone SRC OUT        # SRC's random twin (seed 0), word embeddings = count vectors
    python docs/screens.py pretrain-frozen OUT         # pretrain --embeddings-init counts, word embeddings frozen
    python docs/screens.py pretrain-frozen OUT --preset long   # the same for pretrain --preset long
    python docs/screens.py pretrain-frozen OUT --preset long --steps 10000 --dupe-factor 4   # twice as long
    python docs/screens.py tapt SRC OUT --steps N --lr L      # SRC pretrained further on rt-train, embeddings frozen
    python docs/screens.py tapt SRC OUT --corpus C --dupe-factor 1 --sentiment-masking   # ... on C, AFINN words first
    python docs/screens.py count-probe SRC --windows 5,10,20 --weights 1,10,30,100   # count recipes, probed on dev

These are experiments, not features: the package's own commands are what the README documents.
"""
from __future__ import annotations

import argparse
import re
import shutil
import time
from pathlib import Path

import numpy as np

from bert_from_scratch.model.heads import WORD_EMBEDDINGS          # the parameter's one name
from bert_from_scratch.training.presets import PRESETS


def _copy(src, out) -> Path:
    """Copy SRC's model folder to OUT (not its optimizer state) and return OUT's weights file."""
    from bert_from_scratch.checkpoint import load_safetensors, load_state_dict, resolve_model_folder
    from bert_from_scratch.constants import WEIGHTS_NAME

    out = Path(out)
    if out.exists():
        raise SystemExit(f"error: {out} exists; choose a new folder")
    shutil.copytree(resolve_model_folder(src), out,
                    ignore=shutil.ignore_patterns("optimizer.safetensors", "trainer_state.json"))
    return out / "model.safetensors"


def reinit(src, out, pattern: str, seed: int = 123) -> list[str]:
    """Tensors whose names match ``pattern`` as BERT initialises them: weights normal(0, 0.02), biases 0,
    LayerNorm weight 1 and bias 0. Returns the names."""
    from bert_from_scratch.checkpoint import atomic_save_safetensors, load_safetensors

    path = _copy(src, out)
    tensors, rng, names = load_safetensors(path), np.random.default_rng(seed), []
    for name, t in tensors.items():
        if not re.search(pattern, name):
            continue
        if "LayerNorm" in name:
            new = np.ones(t.shape) if name.endswith("weight") else np.zeros(t.shape)
        else:
            new = rng.normal(0.0, 0.02, t.shape) if name.endswith("weight") else np.zeros(t.shape)
        tensors[name] = new.astype(t.dtype)
        names.append(name)
    if not names:
        raise SystemExit(f"error: no tensor name matches {pattern!r}")
    atomic_save_safetensors(tensors, path)
    return names


def scale_embeddings(src, out, scale: str) -> float:
    """Word embeddings times ``scale``; 'init' scales the median row norm to BERT's init, 0.02 * sqrt(H)."""
    from bert_from_scratch.checkpoint import atomic_save_safetensors, load_safetensors

    path = _copy(src, out)
    tensors = load_safetensors(path)
    E = tensors[WORD_EMBEDDINGS]                                          # (V, H)
    factor = (0.02 * np.sqrt(E.shape[1]) / float(np.median(np.linalg.norm(E, axis=1)))
              if scale == "init" else float(scale))
    tensors[WORD_EMBEDDINGS] = (E * factor).astype(E.dtype)
    atomic_save_safetensors(tensors, path)
    return factor


def counts_alone(src, out, corpus: str | None = None, seed: int = 0) -> None:
    """A random BERT with SRC's config and vocabulary whose word embeddings are count vectors of ``corpus``
    (default: the general mix, the main job's until 2026-12-07), scaled as ``pretrain --embeddings-init counts`` scales them. No MLM, no NSP."""
    from bert_from_scratch.config import BertConfig
    from bert_from_scratch.data.tokenizer import Tokenizer
    from bert_from_scratch.model import BertForPreTraining
    from bert_from_scratch.training.count_vectors import corpus_count_vectors, initial_word_embeddings
    from bert_from_scratch.training.presets import GENERAL_MIX

    src = Path(src) / "checkpoint" if (Path(src) / "checkpoint").is_dir() else Path(src)
    cfg = BertConfig.from_json_file(src / "config.json")
    tok = Tokenizer.from_vocab_file(src / "vocab.txt")
    vectors = corpus_count_vectors(corpus or GENERAL_MIX, tok, cfg.hidden_size)
    model = BertForPreTraining(cfg, seed=seed)
    model.params[WORD_EMBEDDINGS][...] = initial_word_embeddings(vectors, cfg.initializer_range)
    model.save_pretrained(out)
    shutil.copy(src / "vocab.txt", Path(out) / "vocab.txt")


def pretrain_frozen(out, **job) -> dict:
    """``pretrain --embeddings-init counts --freeze-word-embeddings --word-embeddings-std 0.02 --count-window 5
    --count-upweight none`` (this screen came first; the options since 2026-12-05 give the same weights). ``job``:
    other ``run_pretraining`` arguments; the report is returned."""
    from bert_from_scratch.training.pretrain_job import run_pretraining

    return run_pretraining(out=out, embeddings_init="counts", freeze_word_embeddings=True,
                           **{"progress": False, "log": print, "word_embeddings_std": 0.02, "count_window": 5,
                              "count_upweight": None, **job})[1]


def tapt(src, out, corpus: str = "rt-train", **job) -> dict:
    """Task-adaptive pretraining (Gururangan et al. 2020): SRC's weights trained further with MLM + NSP on the
    task's own unlabeled training text (``rt-train``: never dev or test text) in SRC's vocabulary and shape,
    its word embeddings frozen, fresh AdamW state, warmup and decay. ``job``: other ``run_pretraining`` arguments
    (steps, lr, dupe_factor, ...); the report is returned."""
    import bert_from_scratch.training.pretrain_job as job_module
    from bert_from_scratch.config import BertConfig
    from bert_from_scratch.checkpoint import load_safetensors, load_state_dict, resolve_model_folder
    from bert_from_scratch.constants import WEIGHTS_NAME

    src = Path(resolve_model_folder(src))
    cfg = BertConfig.from_json_file(src / "config.json")
    shape = dict(layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, heads=cfg.num_attention_heads,
                 intermediate=cfg.intermediate_size, max_seq_length=cfg.max_position_embeddings)
    cls = job_module.BertForPreTraining

    def from_src(config, seed=0, backend="numpy"):                 # the job's model, SRC's weights
        model = cls(config, seed=seed, backend=backend)
        load_state_dict(model, load_safetensors(src / WEIGHTS_NAME), source=str(src))
        return model

    job_module.BertForPreTraining = from_src
    try:
        return job_module.run_pretraining(out=out, corpus=corpus, vocab_file=str(src / "vocab.txt"),
                                          freeze_word_embeddings=True, embeddings_init="random",
                                          word_embeddings_std=None,          # SRC's embeddings as they are
                                          **{"progress": False, "log": print, **shape, **job})[1]
    finally:
        job_module.BertForPreTraining = cls


def count_probe(src, windows=(5, 10, 20), weights=(1, 10, 30, 100), corpus=None, source="rt-train",
                subsets=8, log=print) -> dict:
    """How ``pretrain --count-window W --count-upweight SOURCE=K`` was chosen: count vectors of ``corpus`` (the main
    job's) in SRC's vocabulary and width for each (W, K), averaged over a review's pieces, read by the ridge probe;
    its DEV accuracy (never test) after training on ``subsets`` seeded draws of 1,000 training reviews (mean, sd)
    and on all of them. Returns {(W, K): (mean, sd, all)}."""
    from bert_from_scratch.checkpoint import resolve_model_folder
    from bert_from_scratch.config import BertConfig
    from bert_from_scratch.data.corpora import load_documents
    from bert_from_scratch.data.labeled import load_classification
    from bert_from_scratch.data.pretraining import tokenize_documents
    from bert_from_scratch.data.tokenizer import Tokenizer
    from bert_from_scratch.training import count_vectors as cv
    from bert_from_scratch.training.presets import GENERAL_MIX
    from bert_from_scratch.training.probe import probe_features

    folder = Path(resolve_model_folder(src))                          # a run folder or its checkpoint
    tok, dim = Tokenizer.from_pretrained(folder), BertConfig.from_json_file(folder / "config.json").hidden_size
    docs = load_documents(corpus or GENERAL_MIX)
    keys = {(d.doc_id, d.text) for d in load_documents(source)}
    data = load_classification("rotten_tomatoes")
    y = {s: np.array([e.label for e in getattr(data, s)]) for s in ("train", "dev")}
    draws = [np.sort(np.random.default_rng(k).permutation(len(y["train"]))[:1000]) for k in range(subsets)]

    def ids(part):
        return list(cv.sentence_ids(tokenize_documents(part, tok), tok))

    everything, upweighted = ids(docs), ids([d for d in docs if (d.doc_id, d.text) in keys])
    out = {}
    for w in windows:
        for k in weights:
            vectors = cv.count_vectors(everything, len(tok), dim, w, upweighted, float(k))
            x = {s: cv.mean_vectors(vectors, tok, [e.text for e in getattr(data, s)]) for s in ("train", "dev")}
            dev = (x["dev"], y["dev"])                                  # passed as "test" too: test is never read
            few = [probe_features((x["train"][i], y["train"][i]), dev, dev, data.num_labels)["dev"] for i in draws]
            full = probe_features((x["train"], y["train"]), dev, dev, data.num_labels)["dev"]
            out[(w, k)] = (float(np.mean(few)), float(np.std(few)), full)
            log(f"window {w:3d}, {source} x{k:<4g} dev accuracy with 1,000 reviews {100 * np.mean(few):.2f} "
                f"(sd {100 * np.std(few):.2f} over {subsets} draws), with all {100 * full:.2f}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, args in (("reinit", ("src", "out", "pattern")), ("scale-embeddings", ("src", "out", "scale")),
                       ("counts-alone", ("src", "out")), ("pretrain-frozen", ("out",)), ("tapt", ("src", "out")),
                       ("count-probe", ("src",))):
        s = sub.add_parser(name)
        for a in args:
            s.add_argument(a)
        if name == "pretrain-frozen":
            s.add_argument("--preset", default="default", choices=sorted(PRESETS), help="pretrain's preset")
            s.add_argument("--steps", type=int, help="optimizer steps (default: the preset's)")
            s.add_argument("--dupe-factor", type=int, help="times each document is masked anew (default: 2)")
        if name == "tapt":
            s.add_argument("--steps", type=int, default=1000)
            s.add_argument("--lr", type=float, default=5e-4)
            s.add_argument("--dupe-factor", type=int, default=10, help="times each document is masked anew")
            s.add_argument("--corpus", default="rt-train")
            s.add_argument("--sentiment-masking", action="store_true", help="mask AFINN-165's words first (SKEP)")
        if name == "count-probe":
            s.add_argument("--windows", default="5,10,20")
            s.add_argument("--weights", default="1,10,30,100")
    a = p.parse_args(argv)
    try:
        run(a)
    except (ValueError, OSError) as e:                    # a missing or broken checkpoint: one line, no traceback
        raise SystemExit(f"error: {e}") from None


def run(a):
    t = time.time()
    if a.command == "reinit":
        print("re-initialised", ", ".join(reinit(a.src, a.out, a.pattern)))
    elif a.command == "scale-embeddings":
        print(f"word embeddings scaled by {scale_embeddings(a.src, a.out, a.scale):.4f}")
    elif a.command == "count-probe":
        count_probe(a.src, [int(w) for w in a.windows.split(",")], [float(k) for k in a.weights.split(",")])
        return
    elif a.command == "counts-alone":
        counts_alone(a.src, a.out)
    elif a.command == "tapt":
        report = tapt(a.src, a.out, corpus=a.corpus, steps=a.steps, lr=a.lr, dupe_factor=a.dupe_factor,
                      sentiment_masking=a.sentiment_masking)
        print(f"held-out MLM {report['held_out_mlm_accuracy']:.4f}  NSP {report['held_out_nsp_accuracy']:.4f}")
    else:
        preset = {k: v for k, v in PRESETS[a.preset].items() if k in ("steps", "vocab_size")}   # long: its length
        preset.update({k: v for k, v in (("steps", a.steps), ("dupe_factor", a.dupe_factor)) if v is not None})
        report = pretrain_frozen(a.out, **preset)
        print(f"held-out MLM {report['held_out_mlm_accuracy']:.4f}  NSP {report['held_out_nsp_accuracy']:.4f}")
    print(f"{a.out} ({time.time() - t:.0f} s)")


if __name__ == "__main__":
    main()
