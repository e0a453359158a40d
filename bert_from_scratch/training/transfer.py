r"""Does pretraining help? The transfer table: fine-tune each starting point the same way, tuned on dev, several seeds.

``bert-from-scratch transfer --checkpoint runs/pretrain`` fine-tunes, on Rotten Tomatoes sentiment:

- for **each checkpoint** given (our pretraining runs: the default, a longer one, MLM only ...), two rows:
  **random init** with that checkpoint's architecture and vocabulary (BERT's initialisation), and the
  **checkpoint** itself; the gain is the checkpoint's over its own random-init twin (checkpoints with
  the same ``vocab.txt`` and ``config.json`` share one random-init row);
- **all-MiniLM-L6-v2** (a real pretrained BERT, 6 x 384, its own vocabulary) as a reference point, unless
  ``--no-minilm``.

The protocol, the same for every row, so that no row is favoured:

1. **Tuning on dev, never on test.** For each row, seed 0 is fine-tuned at every learning rate of the grid;
   the learning rate with the best dev accuracy (ties: the smaller rate) is the row's. With
   ``--tune-on-all-seeds`` every seed runs at every rate and the best **mean** dev accuracy chooses (len(seeds)
   times the runs): one seed's dev (1,275 reviews) moves by about a point from seed to seed, enough to choose a
   rate 2 points worse on test (docs/results.md, "From count vectors, and with them frozen").
2. **Seeds.** At that rate the row is fine-tuned with every seed (seed 0's run is reused); each run keeps
   the epoch with the best dev accuracy (early stopping with ``patience``) and is scored on test.
3. **Intervals.** A row's test accuracy is the mean over its seeds, with a 95% paired-bootstrap interval over
   the test examples (each example's correctness averaged over the seeds, 2,000 resamples); the gain
   of a row over random init is bootstrapped the same way, paired on the same resampled examples:

   .. math:: \Delta = \frac{1}{n}\sum_i \big(\bar c^{\,\mathrm{row}}_i - \bar c^{\,\mathrm{random}}_i\big),
             \qquad \bar c_i = \text{share of seeds that classify test example } i \text{ correctly}

   That interval covers the test sample's noise only. A second interval of the gain resamples the seeds too
   (a two-level bootstrap: seeds with replacement, then test examples; a seed's row and its twin stay paired), so
   it also covers how much the gain moves from seed to seed: with a few hundred or a thousand training examples
   that is the larger part (docs/results.md, "Frozen count-vector embeddings with 1,000 labels"). With three
   seeds it is rough (three seeds make ten distinct resamples); give more ``--seeds`` for a claim that rests on it.
   The per-seed numbers are printed next to both, and ``transfer.json`` keeps every run's correct/wrong per test
   example (``test_correct_by_seed``) for any other analysis.
4. **Trivial baseline**: the majority class of the test split.

**Fewer labels.** ``--max-train-examples N`` fine-tunes every run on N training reviews drawn with its seed
(every row of a seed sees the same N; dev and test stay whole). An epoch is then a few steps, so give more
``--epochs`` and a ``--patience`` as large, or a slow start ends a run at the majority class (docs/results.md,
"With fewer labels").

**The classifier first (LP-FT).** ``--classifier-first E`` gives every run of every row the same first phase:
the classifier alone trained for E epochs on the frozen encoder's features, then the usual fine-tuning
(:mod:`.classifier_first`; docs/results.md, "The classifier first").

**Frozen word embeddings.** ``--freeze-word-embeddings tune`` makes freezing the word embeddings during fine-tuning
part of each row's grid: every rate runs with them trained and with them frozen, and each row keeps the better on
dev (ties: trained). A checkpoint pretrained over frozen count vectors (``--preset long-frozen``) was trained to
read those vectors; its random-init twin may prefer them trained. ``yes`` freezes them in every run.

**What the classifier reads.** ``--pooling mean`` makes every row's classifier read the last layer's mean over the
real tokens (Sentence-BERT's pooling; :func:`~bert_from_scratch.model.heads.sequence_features_forward`) instead of
the pooler's output at [CLS] (Hugging Face's, the default): the same for every row, as every other setting.

**Stopped, or more seeds.** Every fine-tuning, once scored, is kept in its folder with the settings that made it
(:mod:`.transfer_runs`). ``--resume`` reuses the runs an earlier invocation into the same ``--out`` finished, when
made with the same settings, and runs the rest: a table stopped after 40 minutes loses at most the run it was in,
and ``--resume --seeds 0,1,...,9`` adds seven seeds to a three-seed table without redoing its 63 runs.

``--quick`` shrinks everything (200 training examples, one epoch, one learning rate, two seeds) for a
smoke test; its numbers mean nothing.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..constants import BEST_DIR
from ..data.classification import encode_examples
from ..files import atomic_write
from .classification_models import load_for_classification
from .finetuning import evaluate_classifier, finetune
from .run_folder import RunFolderError, hold_run_folder
from .transfer_runs import kept_run, kept_runs, run_settings, start_and_data_digest, write_run

MINILM_ROW = "all-MiniLM-L6-v2"
TRANSFER_JSON = "transfer.json"
BOOTSTRAP_SAMPLES = 2000


@dataclass
class Protocol:
    """The fine-tuning settings every row gets, and the grid its learning rate is tuned on."""

    # 1e-4 is in the grid because random init chose it on dev (2026-12-03, docs/results.md "A wider grid"): a grid
    # without it tuned the baselines worse than the pretrained rows and showed gains that were not there
    lrs: tuple = (1e-4, 3e-4, 1e-3, 3e-3)
    seeds: tuple = (0, 1, 2)
    epochs: int = 10
    patience: int = 3
    batch_size: int = 32
    max_length: int = 64
    max_train_examples: int | None = None        # None: all 10,201 training examples
    minilm_lrs: tuple = (3e-5, 1e-4, 3e-4)       # MiniLM (a 22M-parameter model) on its own, usual grid
    tune_on_all_seeds: bool = False              # choose the rate on the mean dev of every seed, not seed 0's
    classifier_first: int = 0                    # > 0: LP-FT, the classifier alone for this many epochs first
    # whether fine-tuning updates the word embeddings: (False,), (True,), or (False, True) to tune it on dev per row
    freeze_word_embeddings: tuple = (False,)
    pooling: str = "cls"                         # what every row's classifier reads: "cls" (the pooler) or "mean"

    @classmethod
    def quick(cls) -> "Protocol":
        return cls(lrs=(1e-3,), seeds=(0, 1), epochs=1, patience=1, max_train_examples=200, minilm_lrs=(1e-4,))


@dataclass
class Row:
    name: str
    init: str                                  # "random", "minilm" or a checkpoint folder
    like: str | None = None                    # with init "random": the folder to copy the architecture from
    dev_by_lr: dict = field(default_factory=dict)
    lr: float | None = None
    frozen: bool = False                       # the tuned choice: word embeddings frozen in fine-tuning
    test_by_seed: dict = field(default_factory=dict)
    dev_by_seed: dict = field(default_factory=dict)
    correct: list | None = None                # (seeds, n_test) 0/1, for the paired bootstrap
    mean: float | None = None
    interval: tuple | None = None
    gain: float | None = None
    gain_interval: tuple | None = None
    gain_interval_seeds: tuple | None = None   # the same gain, seeds resampled as well as test examples
    baseline: str | None = None                # the random-init row its gain is measured against
    digest: str | None = None                  # sha256 of the starting point's files and the data (transfer_runs)


def bootstrap_interval(values: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of ``values.mean()`` (resampling the entries)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(samples, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def seeds_and_examples_interval(diff: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                               seed: int = 0) -> tuple[float, float]:
    """95% interval of ``diff.mean()`` for ``diff`` (seeds, n_test): each resample draws the seeds with
    replacement, then the test examples with replacement (a two-level bootstrap), so it covers the spread between
    seeds as well as the test sample's noise."""
    rng = np.random.default_rng(seed)
    n_seeds, n = diff.shape
    means = np.empty(samples)
    for b in range(samples):
        by_example = diff[rng.integers(0, n_seeds, n_seeds)].mean(axis=0)        # (n,) over the drawn seeds
        means[b] = by_example[rng.integers(0, n, n)].mean()
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def setting_name(lr: float, frozen: bool) -> str:
    """A point of the grid as the table and ``dev_by_lr`` name it: ``0.0003``, or ``0.0003 frozen``."""
    return f"{lr:g}" + (" frozen" if frozen else "")


def _one_run(row: Row, data, out: Path, lr: float, seed: int, p: Protocol, log,
             frozen: bool = False) -> tuple[float, float, np.ndarray]:
    """Fine-tune ``row`` at ``lr`` with ``seed`` (the word embeddings ``frozen`` or not) -> (dev accuracy, test
    accuracy, test correctness (n,)); a run kept in its folder with the same settings is read, not run again."""
    folder = out / _slug(row.name) / (f"lr{lr:g}-seed{seed}" + ("-frozen" if frozen else ""))
    row.digest = row.digest or start_and_data_digest(row.init, row.like, data)
    settings = run_settings(row.digest, row.init, row.like, lr, seed, frozen, p)
    kept = kept_run(folder, settings)
    if kept is not None:
        log(f"  {row.name} lr {setting_name(lr, frozen)} seed {seed}: dev {kept[0]:.4f}  test {kept[1]:.4f}  "
            f"(kept from an earlier run)")
        return kept
    model, tokenizer = load_for_classification(row.init, num_labels=data.num_labels, seed=seed,
                                               like=row.like or "minilm", log=lambda m: None, pooling=p.pooling)
    result = finetune(model, tokenizer, data, folder, epochs=p.epochs, batch_size=p.batch_size, lr=lr,
                      max_length=p.max_length, patience=p.patience, seed=seed,
                      max_train_examples=p.max_train_examples, progress=False, log=lambda m: None, plot=False,
                      overwrite=True, run_info={"transfer_row": row.name}, classifier_first=p.classifier_first,
                      freeze_word_embeddings=frozen)
    if result.diverged or result.best_epoch == 0:
        log(f"  {row.name} lr {setting_name(lr, frozen)} seed {seed}: diverged ({result.message})")
        write_run(folder, settings, -math.inf, math.nan, np.zeros(len(data.test)))
        return -math.inf, float("nan"), np.zeros(len(data.test))
    test = encode_examples(tokenizer, data.test, p.max_length, data.num_labels, "test")
    ev = evaluate_classifier(model, test)                # the model holds the best epoch's weights
    shutil.rmtree(folder / BEST_DIR, ignore_errors=True)  # the table needs the numbers, not 20 copies of weights
    correct = (ev["predictions"] == test.labels).astype(np.float64)
    write_run(folder, settings, float(result.best_dev_accuracy), float(ev["accuracy"]), correct)
    log(f"  {row.name} lr {setting_name(lr, frozen)} seed {seed}: dev {result.best_dev_accuracy:.4f}  "
        f"test {ev['accuracy']:.4f}  "
        f"(best epoch {result.best_epoch}, {result.seconds:.0f} s)")
    return float(result.best_dev_accuracy), float(ev["accuracy"]), correct


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-")


def run_row(row: Row, data, out: Path, p: Protocol, log) -> Row:
    """Tune ``row``'s learning rate (and, when the protocol asks, whether its word embeddings stay frozen) on dev
    (seed 0's, or every seed's mean), then run every seed at the chosen setting."""
    runs = {}
    grid = [(lr, frozen) for frozen in p.freeze_word_embeddings
            for lr in (p.minilm_lrs if row.init == "minilm" else p.lrs)]
    tuning_seeds = p.seeds if p.tune_on_all_seeds else p.seeds[:1]
    for lr, frozen in grid:
        for seed in tuning_seeds:
            runs[(lr, frozen, seed)] = _one_run(row, data, out, lr, seed, p, log, frozen)
        row.dev_by_lr[setting_name(lr, frozen)] = float(np.mean([runs[(lr, frozen, s)][0] for s in tuning_seeds]))
    # ties: the smaller rate, then the embeddings trained (the plainer setting)
    row.lr, row.frozen = max(grid, key=lambda g: (row.dev_by_lr[setting_name(*g)], -g[0], not g[1]))
    chosen = (row.lr, row.frozen)
    for seed in p.seeds:
        dev, test, correct = runs.get((*chosen, seed)) or _one_run(row, data, out, row.lr, seed, p, log, row.frozen)
        row.dev_by_seed[seed], row.test_by_seed[seed] = dev, test
        runs[(*chosen, seed)] = (dev, test, correct)
    correct = np.stack([runs[(*chosen, s)][2] for s in p.seeds])            # (seeds, n_test)
    row.correct = correct.tolist()
    row.mean = float(correct.mean())
    row.interval = bootstrap_interval(correct.mean(axis=0))
    return row


def run_transfer(checkpoints: list, out, protocol: Protocol | None = None, minilm: bool = True,
                 dataset: str = "rotten_tomatoes", log: Callable[[str], None] = print, overwrite: bool = False,
                 resume: bool = False) -> dict:
    """Every row of the table (module docstring); writes ``out/transfer.json`` and returns its content.

    A folder that holds a ``transfer.json`` or finished fine-tunings already is refused unless ``resume`` (its
    runs made with the same settings are reused: :mod:`.transfer_runs`) or ``overwrite`` (every run is redone);
    one process at a time."""
    from ..data.labeled import load_classification

    p = protocol or Protocol()
    out = Path(out)
    if resume and overwrite:
        raise RunFolderError("--resume reuses the runs in --out and --overwrite redoes them: give one of the two")
    finished, kept = (out / TRANSFER_JSON).exists(), kept_runs(out)
    if (finished or kept) and not (resume or overwrite):
        what = (f"a transfer table ({TRANSFER_JSON})" if finished else
                f"{len(kept)} finished fine-tunings of a table that did not finish")
        raise RunFolderError(f"{out} already holds {what}; --resume to reuse its runs, --overwrite to redo them, "
                             f"or choose another --out")
    with hold_run_folder(out):
        if overwrite:
            for record in kept_runs(out):
                record.unlink()
        return _run_rows(checkpoints, out, p, minilm, load_classification(dataset), dataset, log)


def _run_rows(checkpoints, out: Path, p: Protocol, minilm: bool, data, dataset: str, log) -> dict:
    rows = []
    for c, first, new in shared_twins(checkpoints):
        twin = f"random init (like {first})"
        if new:
            rows.append(Row(twin, "random", like=str(first)))
        rows.append(Row(f"pretrained: {c}", str(c), baseline=twin))
    if minilm:
        rows.append(Row(MINILM_ROW, "minilm"))
    if not rows:
        rows.append(Row("random init (like all-MiniLM-L6-v2)", "random", like="minilm"))
    for row in rows:
        log(f"{row.name}:")
        run_row(row, data, out, p, log)
    by_name = {r.name: r for r in rows}
    for row in rows:
        if row.baseline:
            paired = np.asarray(row.correct) - np.asarray(by_name[row.baseline].correct)   # (seeds, n), seed-paired
            diff = paired.mean(axis=0)                                                     # (n,) per test example
            row.gain, row.gain_interval = float(diff.mean()), bootstrap_interval(diff)
            row.gain_interval_seeds = seeds_and_examples_interval(paired)
    majority = float(np.bincount([e.label for e in data.test]).max() / len(data.test))
    report = {"dataset": dataset, "n_test": len(data.test), "majority_test_accuracy": majority,
              "protocol": asdict(p), "rows": [_report_row(r) for r in rows]}
    atomic_write(out / TRANSFER_JSON, json.dumps(report, indent=2))
    log(format_table(report))
    return report


def _report_row(row: Row) -> dict:
    """A row as transfer.json keeps it: its correctness per test example as one string of 0/1 per seed."""
    out = {k: v for k, v in asdict(row).items() if k != "correct"}
    out["test_correct_by_seed"] = {str(s): "".join("1" if c else "0" for c in correct)
                                   for s, correct in zip(row.test_by_seed, row.correct)}
    return out


def shared_twins(checkpoints) -> list[tuple]:
    """``(checkpoint, first, new)`` for each checkpoint: ``first`` is the first checkpoint with the same architecture
    and vocabulary, whose random-init twin stands for both, and ``new`` says the checkpoint is that first one."""
    firsts, out = {}, []
    for c in checkpoints:
        key = architecture_and_vocabulary(c)
        new = key not in firsts
        firsts.setdefault(key, c)
        out.append((c, firsts[key], new))
    return out


def architecture_and_vocabulary(checkpoint) -> tuple[str, str]:
    """What a random-init twin copies from ``checkpoint``: its config.json and vocab.txt, as text."""
    from ..checkpoint import resolve_model_folder
    from ..constants import CONFIG_NAME, VOCAB_NAME

    folder = resolve_model_folder(checkpoint)
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    config = {k: v for k, v in config.items() if k not in ("architectures", "transformers_version", "torch_dtype")}
    vocab = folder / VOCAB_NAME
    return json.dumps(config, sort_keys=True), vocab.read_text(encoding="utf-8") if vocab.is_file() else ""


def format_table(report: dict) -> str:
    """The table as Markdown: per-seed test accuracies, mean with interval, gain over random init."""
    p = report["protocol"]
    grid = ", ".join(f"{lr:g}" for lr in p["lrs"])
    if any(r["name"] == MINILM_ROW for r in report["rows"]):    # MiniLM is tuned on its own grid (Protocol)
        grid += f"; {MINILM_ROW}: " + ", ".join(f"{lr:g}" for lr in p["minilm_lrs"])
    tuned = "every seed's mean dev" if p.get("tune_on_all_seeds") else "dev (seed 0)"
    n = p.get("max_train_examples")
    trained = "the whole training split" if n is None else f"{n:,} training examples (a subset drawn with each seed)"
    if p.get("classifier_first"):
        trained += f", the classifier first trained alone for {p['classifier_first']} epochs (LP-FT)"
    frozen_choices = tuple(p.get("freeze_word_embeddings", (False,)))
    if frozen_choices == (True,):
        trained += ", the word embeddings frozen"
    if p.get("pooling", "cls") == "mean":
        trained += ", the classifier reading the mean of the last layer over the real tokens"
    both_ways = " (each with the word embeddings trained and frozen)" if len(frozen_choices) > 1 else ""
    lines = [f"{report['dataset']} test ({report['n_test']} examples); fine-tuned on {trained}; "
             f"learning rate tuned on {tuned} over [{grid}]{both_ways}; "
             f"seeds {', '.join(map(str, p['seeds']))}; up to {p['epochs']} epochs (patience {p['patience']}); "
             f"95% paired-bootstrap intervals",
             "| row | lr (dev-tuned) | test per seed | mean test | 95% interval | gain vs its random init "
             "| the gain's interval, seeds resampled too |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        seeds = " / ".join(f"{100 * a:.1f}" for a in r["test_by_seed"].values())
        gain = "" if r["gain"] is None else \
            f"{100 * r['gain']:+.1f} [{100 * r['gain_interval'][0]:+.1f}, {100 * r['gain_interval'][1]:+.1f}]"
        seeded = "" if r.get("gain_interval_seeds") is None else \
            f"[{100 * r['gain_interval_seeds'][0]:+.1f}, {100 * r['gain_interval_seeds'][1]:+.1f}]"
        setting = setting_name(r["lr"], r.get("frozen", False))
        lines.append(f"| {r['name']} | {setting} | {seeds} | **{100 * r['mean']:.1f}%** | "
                     f"{100 * r['interval'][0]:.1f}-{100 * r['interval'][1]:.1f} | {gain} | {seeded} |")
    lines.append(f"| majority class (trivial baseline) | | | {100 * report['majority_test_accuracy']:.1f}% | | | |")
    return "\n".join(lines)
