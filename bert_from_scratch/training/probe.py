r"""Linear probes: how much of a task is linearly readable from a frozen encoder's features.

``bert-from-scratch probe --checkpoint runs/pretrain`` runs the encoder, frozen, over the task's training, dev and
test texts and fits a ridge classifier on four kinds of features, each (N, H):

- ``embeddings-mean``: the embedding layer's output (word + position + segment, LayerNorm), averaged over the
  sequence's real tokens;
- ``last-mean``: the last layer's output, averaged the same way;
- ``cls``: the last layer's output at [CLS];
- ``pooled``: the pooler's output (what a sequence classifier reads).

For each checkpoint it probes its random-init twin too (the same architecture and vocabulary: what random
features give; checkpoints with the same ``config.json`` and ``vocab.txt`` share one twin, as in ``transfer``),
and all-MiniLM-L6-v2 unless ``--no-minilm``. Fine-tuning (``bert-from-scratch transfer``) says
whether pretraining helps; a probe says whether the pretrained features already hold the task.
``--count-vectors CORPUS`` adds a row per checkpoint that asks the question before that one, whether the text
holds it: count-based vectors (PPMI-SVD) of the corpus in the checkpoint's vocabulary and width, averaged over a
text's pieces (:mod:`.count_vectors`; the embeddings-mean column only).

The classifier, one-vs-rest ridge regression on standardised features (closed form, no optimiser to tune):

.. math:: W = (A^\top A + \lambda N I)^{-1} A^\top (Y - \bar Y), \qquad
          \hat y = \arg\max_k (A W + \bar Y)_k, \qquad Y_{nk} = \pm 1

with :math:`A` the standardised training features. :math:`\lambda` is chosen on dev (ties: the larger, the
simpler model), never on test; the test accuracy at that :math:`\lambda` is reported with its 95% Wilson interval,
next to the majority class.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..files import atomic_write
from ..nn.layers import masked_mean_forward
from .metrics import wilson_interval
from .run_folder import RunFolderError, hold_run_folder

FEATURES = ("embeddings-mean", "last-mean", "cls", "pooled")
LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
PROBE_JSON = "probe.json"


def frozen_features(model, tokenizer, texts, max_length: int = 64, batch_size: int = 256) -> dict:
    """The four kinds of features (module docstring) of ``texts``, float64, each (N, H)."""
    parts = {name: [] for name in FEATURES}
    for i in range(0, len(texts), batch_size):
        enc = tokenizer.encode_batch(list(texts[i:i + batch_size]), max_length=max_length)
        out = model.encode(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], output_hidden_states=True)
        mean = lambda h: masked_mean_forward(np.asarray(h, dtype=np.float64), enc["attention_mask"])[0]  # (B, H)
        parts["embeddings-mean"].append(mean(out.hidden_states[0]))
        parts["last-mean"].append(mean(out.last_hidden_state))
        parts["cls"].append(np.asarray(out.last_hidden_state[:, 0], dtype=np.float64))
        parts["pooled"].append(np.asarray(out.pooler_output, dtype=np.float64))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def ridge_fit(X: np.ndarray, y: np.ndarray, num_labels: int, lam: float):
    """One-vs-rest ridge on standardised ``X`` (N, F), labels ``y`` (N,) -> (mean, std, W (F, K), bias (K,))."""
    mu, sd = X.mean(axis=0), X.std(axis=0) + 1e-8
    A = (X - mu) / sd
    Y = np.where(np.arange(num_labels)[None, :] == y[:, None], 1.0, -1.0)                 # (N, K)
    bias = Y.mean(axis=0)
    W = np.linalg.solve(A.T @ A + lam * len(A) * np.eye(A.shape[1]), A.T @ (Y - bias))
    return mu, sd, W, bias


def ridge_predict(fit, X: np.ndarray) -> np.ndarray:
    mu, sd, W, bias = fit
    return ((X - mu) / sd @ W + bias).argmax(axis=1)


def probe_features(train: tuple, dev: tuple, test: tuple, num_labels: int, lambdas=LAMBDAS) -> dict:
    """(features (N, F), labels (N,)) of each split -> λ chosen on dev, dev and test accuracy, test interval."""
    dev_by_lambda, fits = {}, {}
    for lam in lambdas:
        fits[lam] = ridge_fit(train[0], train[1], num_labels, lam)
        dev_by_lambda[lam] = float((ridge_predict(fits[lam], dev[0]) == dev[1]).mean())
    lam = max(lambdas, key=lambda l: (dev_by_lambda[l], l))
    test_accuracy = float((ridge_predict(fits[lam], test[0]) == test[1]).mean())
    return {"lambda": lam, "dev_by_lambda": {f"{l:g}": a for l, a in dev_by_lambda.items()},
            "dev": dev_by_lambda[lam], "test": test_accuracy,
            "test_interval": wilson_interval(test_accuracy, len(test[1]))}


@dataclass
class ProbeRow:
    name: str
    init: str                                    # "random", "minilm", "counts" or a checkpoint folder
    like: str | None = None
    corpus: str | None = None                    # "counts": the corpus whose co-occurrences give the vectors
    by_feature: dict = field(default_factory=dict)


def run_probe(checkpoints: list, out=None, minilm: bool = True, dataset: str = "rotten_tomatoes",
              max_train_examples: int | None = None, max_length: int = 64, seed: int = 0,
              log: Callable[[str], None] = print, overwrite: bool = False, count_vectors: str | None = None) -> dict:
    """Probe every row (each checkpoint, its random-init twin, MiniLM); prints the table, writes ``out/probe.json``.

    count_vectors: a corpus name; each checkpoint gets a row more, the PPMI-SVD vectors of that corpus in the
    checkpoint's vocabulary and width, averaged over a text's pieces (``count_vectors.py``; embeddings-mean only).
    A folder that holds a ``probe.json`` already is refused unless ``overwrite``; one process at a time."""
    if out is None:
        return _probe_rows(checkpoints, None, minilm, dataset, max_train_examples, max_length, seed, log,
                           count_vectors)
    out = Path(out)
    if (out / PROBE_JSON).exists() and not overwrite:
        raise RunFolderError(f"{out} already holds a probe table ({PROBE_JSON}); --overwrite to replace it, "
                             f"or choose another --out")
    with hold_run_folder(out):
        return _probe_rows(checkpoints, out, minilm, dataset, max_train_examples, max_length, seed, log,
                           count_vectors)


def _probe_rows(checkpoints, out, minilm, dataset, max_train_examples, max_length, seed, log,
                count_corpus=None) -> dict:
    from ..data.labeled import load_classification
    from .classification_models import load_for_classification
    from .transfer import shared_twins

    data = load_classification(dataset)
    train = data.train
    if max_train_examples is not None and max_train_examples < len(train):
        keep = np.sort(np.random.default_rng(seed).permutation(len(train))[:max_train_examples])
        train = [train[i] for i in keep]
    rows = []
    for c, _, new in shared_twins(checkpoints):    # checkpoints alike share one twin and count-vector row
        if new:
            rows.append(ProbeRow(f"random init (like {c})", "random", like=str(c)))
        rows.append(ProbeRow(f"pretrained: {c}", str(c)))
        if count_corpus and new:
            rows.append(ProbeRow(f"count vectors of {count_corpus} (vocab of {c})", "counts", like=str(c),
                                 corpus=count_corpus))
    if minilm:
        rows.append(ProbeRow("all-MiniLM-L6-v2", "minilm"))
    splits = {"train": train, "dev": data.dev, "test": data.test}
    labels = {s: np.array([e.label for e in ex]) for s, ex in splits.items()}
    for row in rows:
        init = "random" if row.init == "counts" else row.init
        model, tokenizer = load_for_classification(init, num_labels=data.num_labels, seed=seed,
                                                   like=row.like or "minilm", log=lambda m: None)
        if row.init == "counts":              # the corpus's PPMI-SVD vectors in the checkpoint's vocabulary and width
            from .count_vectors import corpus_count_vectors, mean_vectors

            vectors = corpus_count_vectors(row.corpus, tokenizer, model.config.hidden_size, log=log)
            feats = {s: {"embeddings-mean": mean_vectors(vectors, tokenizer, [e.text for e in ex], max_length)}
                     for s, ex in splits.items()}
        else:
            feats = {s: frozen_features(model, tokenizer, [e.text for e in ex], max_length)
                     for s, ex in splits.items()}
        for name in feats["train"]:
            row.by_feature[name] = probe_features(*[(feats[s][name], labels[s]) for s in splits], data.num_labels)
        log(f"{row.name}: " + ", ".join(f"{n} {r['test']:.3f}" for n, r in row.by_feature.items()))
    majority = float(np.bincount(labels["test"]).max() / len(labels["test"]))
    report = {"dataset": dataset, "n_train": len(train), "n_dev": len(data.dev), "n_test": len(data.test),
              "majority_test_accuracy": majority, "lambdas": list(LAMBDAS),
              "rows": [{"name": r.name, "init": r.init, "by_feature": r.by_feature} for r in rows]}
    if out is not None:
        atomic_write(out / PROBE_JSON, json.dumps(report, indent=2))
    log(format_table(report))
    return report


def format_table(report: dict) -> str:
    lines = [f"Linear probes on frozen features, {report['dataset']}: ridge fitted on {report['n_train']} training "
             f"examples, lambda chosen on dev ({report['n_dev']}), test accuracy ({report['n_test']}) [95% Wilson]",
             f"{'row':<52}" + "".join(f"{n:>22}" for n in FEATURES)]
    for r in report["rows"]:
        cells = [f"{f['test']:.1%} [{f['test_interval'][0]:.1%}, {f['test_interval'][1]:.1%}]" if f else "-"
                 for f in (r["by_feature"].get(n) for n in FEATURES)]
        lines.append(f"{r['name'][:52]:<52}" + "".join(f"{c:>22}" for c in cells))
    lines.append(f"{'majority class':<52}{report['majority_test_accuracy']:>22.1%}")
    return "\n".join(lines)
