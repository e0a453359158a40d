"""Pretraining on in-domain text without leaking held-out text, and the transfer table's protocol.

- ``rt-train`` (the Rotten Tomatoes training split's reviews + plot summaries) holds no dev or test text,
  after normalisation; the check finds a planted leak in each form it looks for;
- the transfer protocol tunes the learning rate on dev, never on test (a test split with flipped labels
  does not move the choice), and its paired bootstrap interval behaves;
- ``bert-from-scratch transfer --quick`` runs end to end and prints the table.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pytest

from bert_from_scratch.cli import main
from bert_from_scratch.data.corpora import CorpusError, _make_document, load_documents
from bert_from_scratch.data.domain_corpora import rt_train_documents
from bert_from_scratch.data.held_out import check_no_leak, classification_held_out, find_leaks, normalise
from bert_from_scratch.data.labeled import ClassificationData, Example, load_classification
from bert_from_scratch.training import transfer


@pytest.fixture(scope="module")
def rt():
    data = load_classification("rotten_tomatoes")
    return data, rt_train_documents(0, data)


def test_rt_train_corpus_holds_no_dev_or_test_text(rt):
    data, docs = rt
    assert find_leaks(docs, classification_held_out(data)) == []
    text = normalise("\n".join(d.text for d in docs))
    held_out = {normalise(e.text) for e in data.dev + data.test}
    paragraphs = {normalise(p) for d in docs for p in d.text.split("\n") if p.strip()}
    assert not paragraphs & held_out
    # and it is the training split's text: most training reviews are in it, with the plot summaries
    train = [normalise(e.text) for e in data.train]
    assert sum(t in paragraphs for t in train) > 0.99 * len(train)
    assert len(docs) > 1000 and len(text.split()) > 250_000


def test_the_leak_check_finds_planted_leaks(rt):
    data, docs = rt
    dev, test = data.dev[3].text, data.test[11].text
    long_test = next(e.text for e in data.test if len(e.text.split()) >= 12)
    planted = [
        _make_document(dev, None, "exact"),                                          # a whole paragraph
        _make_document("Some plot.\n\n" + test.upper().replace(" ", "  "), None, "case"),  # case and spacing
        _make_document("It was said that " + long_test + " Indeed.", None, "inside"),     # inside a sentence
    ]
    for doc in planted:
        assert len(find_leaks(docs + [doc], classification_held_out(data))) == 1, doc.doc_id
        with pytest.raises(CorpusError, match="dev/test text"):
            check_no_leak(docs + [doc], classification_held_out(data), "rotten_tomatoes")


def test_short_held_out_texts_count_only_as_whole_units():
    held_out = classification_held_out(ClassificationData([], [Example("a great movie", 1)], [], ["neg", "pos"]))
    inside = _make_document("It is a great movie with a bad end.", None, "x")       # chance overlap: no leak
    whole = _make_document("Plot first.\n\nA  great movie", None, "y")
    assert find_leaks([inside], held_out) == [] and find_leaks([whole], held_out) == ["a great movie"]


def test_corpora_join_with_plus():
    docs = load_documents("python-docs+python-docs")
    assert len(docs) == 2 * len(load_documents("python-docs"))


def test_bootstrap_interval_covers_the_mean_and_narrows():
    rng = np.random.default_rng(0)
    small, large = ((rng.random(n) < 0.7).astype(float) for n in (100, 10_000))
    for v in (small, large):
        lo, hi = transfer.bootstrap_interval(v)
        assert lo < v.mean() < hi
    assert np.diff(transfer.bootstrap_interval(large)) < np.diff(transfer.bootstrap_interval(small)) / 5


def test_the_seeds_and_examples_interval_widens_with_the_seeds_spread():
    """Two seeds that disagree (one gains on every example, the other loses on every one): the examples-only
    interval sees a sure 0, the two-level one the seeds' spread; seeds that agree leave the two intervals alike."""
    rng = np.random.default_rng(1)
    agree = np.tile((rng.random(1000) < 0.6).astype(float) - 0.5, (3, 1))             # (seeds, n), equal rows
    lo, hi = transfer.seeds_and_examples_interval(agree)
    assert lo < agree.mean() < hi
    assert np.diff(transfer.seeds_and_examples_interval(agree)) == pytest.approx(
        np.diff(transfer.bootstrap_interval(agree.mean(axis=0))), rel=0.2)
    disagree = np.stack([np.full(1000, 0.3), np.full(1000, -0.3)])
    assert np.diff(transfer.bootstrap_interval(disagree.mean(axis=0))) == pytest.approx(0)
    lo, hi = transfer.seeds_and_examples_interval(disagree)
    assert lo == pytest.approx(-0.3) and hi == pytest.approx(0.3)


def test_the_learning_rate_is_chosen_on_dev_never_on_test(monkeypatch, tmp_path):
    """dev prefers 1e-3, test would prefer 3e-3: the row must take 1e-3, and its seeds run at it."""
    dev_acc = {3e-4: 0.70, 1e-3: 0.80, 3e-3: 0.75}
    test_acc = {3e-4: 0.60, 1e-3: 0.65, 3e-3: 0.90}
    calls = []

    def fake_run(row, data, out, lr, seed, p, log, frozen=False):
        calls.append((lr, seed))
        return dev_acc[lr], test_acc[lr], np.full(4, test_acc[lr])
    monkeypatch.setattr(transfer, "_one_run", fake_run)
    grid = transfer.Protocol(lrs=(3e-4, 1e-3, 3e-3))
    row = transfer.run_row(transfer.Row("r", "random"), None, tmp_path, grid, log=lambda m: None)
    assert row.lr == 1e-3 and row.mean == pytest.approx(0.65)
    assert calls == [(3e-4, 0), (1e-3, 0), (3e-3, 0), (1e-3, 1), (1e-3, 2)]     # seed 0 reused, not rerun
    dev_acc[3e-4] = 0.80                                                         # a tie: the smaller rate
    assert transfer.run_row(transfer.Row("r", "random"), None, tmp_path, grid, log=lambda m: None).lr == 3e-4


def test_tuning_on_all_seeds_chooses_on_the_mean_dev(monkeypatch, tmp_path):
    """Seed 0's dev prefers 1e-3 by a hair, the three seeds' mean prefers 1e-4 (the twin of docs/results.md, "From
    count vectors"): the default takes 1e-3, --tune-on-all-seeds 1e-4, and runs every seed at every rate once."""
    dev = {(1e-4, 0): .768, (1e-4, 1): .777, (1e-4, 2): .766, (1e-3, 0): .772, (1e-3, 1): .760, (1e-3, 2): .758}
    calls = []

    def fake_run(row, data, out, lr, seed, p, log, frozen=False):
        calls.append((lr, seed))
        return dev[(lr, seed)], 0.5, np.full(4, 0.5)
    monkeypatch.setattr(transfer, "_one_run", fake_run)
    grid = transfer.Protocol(lrs=(1e-4, 1e-3))
    assert transfer.run_row(transfer.Row("r", "random"), None, tmp_path, grid, log=lambda m: None).lr == 1e-3
    calls.clear()
    grid.tune_on_all_seeds = True
    row = transfer.run_row(transfer.Row("r", "random"), None, tmp_path, grid, log=lambda m: None)
    assert row.lr == 1e-4 and row.dev_by_lr == {"0.0001": pytest.approx(.7703, abs=1e-4),
                                                "0.001": pytest.approx(.7633, abs=1e-4)}
    assert sorted(calls) == sorted(dev) and row.dev_by_seed == {0: .768, 1: .777, 2: .766}     # no run twice
    report = {"dataset": "d", "n_test": 4, "majority_test_accuracy": .5, "protocol": asdict(grid),
              "rows": [{k: v for k, v in asdict(row).items() if k != "correct"}]}
    assert "tuned on every seed's mean dev over [0.0001, 0.001]" in transfer.format_table(report)
    assert "fine-tuned on the whole training split;" in transfer.format_table(report)
    report["protocol"]["max_train_examples"] = 1000              # a learning-curve point says how many labels
    assert "fine-tuned on 1,000 training examples (a subset drawn with each seed);" in transfer.format_table(report)
    assert "all-MiniLM-L6-v2: " not in transfer.format_table(report)
    report["rows"][0]["name"] = transfer.MINILM_ROW              # MiniLM's row says the grid it was tuned on
    assert "over [0.0001, 0.001; all-MiniLM-L6-v2: 3e-05, 0.0001, 0.0003]" in transfer.format_table(report)


def test_freezing_the_word_embeddings_is_tuned_on_dev_like_the_rate(monkeypatch, tmp_path):
    """--freeze-word-embeddings tune: every rate runs with the word embeddings trained and frozen, and dev alone
    chooses the pair (test prefers the other); a tie keeps them trained; the table names the choice."""
    dev = {(1e-4, False): .70, (1e-3, False): .72, (1e-4, True): .74, (1e-3, True): .71}
    test = {(1e-4, False): .90, (1e-3, False): .90, (1e-4, True): .60, (1e-3, True): .90}
    calls = []

    def fake_run(row, data, out, lr, seed, p, log, frozen=False):
        calls.append((lr, frozen, seed))
        return dev[(lr, frozen)], test[(lr, frozen)], np.full(4, test[(lr, frozen)])
    monkeypatch.setattr(transfer, "_one_run", fake_run)
    grid = transfer.Protocol(lrs=(1e-4, 1e-3), seeds=(0, 1), freeze_word_embeddings=(False, True))
    row = transfer.run_row(transfer.Row("r", "random"), None, tmp_path, grid, log=lambda m: None)
    assert (row.lr, row.frozen) == (1e-4, True) and row.mean == pytest.approx(.60)
    assert calls == [(1e-4, False, 0), (1e-3, False, 0), (1e-4, True, 0), (1e-3, True, 0), (1e-4, True, 1)]
    assert row.dev_by_lr == {"0.0001": .70, "0.001": .72, "0.0001 frozen": .74, "0.001 frozen": .71}
    report = {"dataset": "d", "n_test": 4, "majority_test_accuracy": .5, "protocol": asdict(grid),
              "rows": [{k: v for k, v in asdict(row).items() if k != "correct"}]}
    table = transfer.format_table(report)
    assert "over [0.0001, 0.001] (each with the word embeddings trained and frozen)" in table
    assert "| r | 0.0001 frozen | 60.0 / 60.0 |" in table
    dev[(1e-3, False)] = .74                                  # a tie at another rate: the smaller rate first
    assert (transfer.run_row(transfer.Row("r", "random"), None, tmp_path, grid, log=lambda m: None).lr,) == (1e-4,)
    dev[(1e-4, False)] = .74                                  # a tie at the same rate: the embeddings trained
    row = transfer.run_row(transfer.Row("r", "random"), None, tmp_path, grid, log=lambda m: None)
    assert (row.lr, row.frozen) == (1e-4, False)
    grid.freeze_word_embeddings = (False,)                     # the default: the embeddings trained, never frozen
    calls.clear()
    transfer.run_row(transfer.Row("r", "random"), None, tmp_path, grid, log=lambda m: None)
    assert not any(frozen for _, frozen, _ in calls)


def test_the_freeze_flag_reaches_the_protocol(tiny_review_checkpoint, monkeypatch, tmp_path, capsys):
    folder, _, _ = tiny_review_checkpoint
    seen = []
    monkeypatch.setattr(transfer, "run_transfer",
                        lambda checkpoints, out, p, **kw: seen.append(p.freeze_word_embeddings))
    for flags in (["--freeze-word-embeddings", "tune"], ["--freeze-word-embeddings", "yes"], []):
        assert main(["transfer", *flags, "--no-minilm", "--checkpoint", str(folder), "--out", str(tmp_path)]) == 0
    assert seen == [(False, True), (True,), (False,)]
    with pytest.raises(SystemExit):
        main(["transfer", "--freeze-word-embeddings", "maybe", "--checkpoint", str(folder)])
    assert "invalid choice: 'maybe'" in capsys.readouterr().err


def test_the_default_grid_reaches_down_to_the_rate_random_init_prefers():
    """Random init chose 1e-4 on dev when it could (docs/results.md, "A wider grid"): without it in the grid the
    baselines were tuned worse than the pretrained rows."""
    assert min(transfer.Protocol().lrs) <= 1e-4 and max(transfer.Protocol().lrs) >= 1e-3


def test_transfer_quick_runs_end_to_end(tiny_review_checkpoint, tmp_path, capsys):
    folder, _, _ = tiny_review_checkpoint
    code = main(["transfer", "--quick", "--no-minilm", "--checkpoint", str(folder), "--out", str(tmp_path / "t")])
    assert code == 0
    report = json.loads((tmp_path / "t" / "transfer.json").read_text())
    rows = report["rows"]
    assert [r["name"] for r in rows] == [f"random init (like {folder})", f"pretrained: {folder}"]
    assert rows[1]["baseline"] == rows[0]["name"]
    assert all(len(r["test_by_seed"]) == 2 and 0 <= r["mean"] <= 1 for r in rows)
    assert rows[0]["gain"] is None and rows[1]["gain_interval"][0] <= rows[1]["gain"] <= rows[1]["gain_interval"][1]
    assert rows[1]["gain_interval_seeds"][0] <= rows[1]["gain"] <= rows[1]["gain_interval_seeds"][1]
    for r in rows:                          # every run's correct/wrong per test example, kept for later analysis
        kept = r["test_correct_by_seed"]
        assert list(kept) == ["0", "1"] and all(len(c) == report["n_test"] and set(c) <= {"0", "1"}
                                                for c in kept.values())
        assert [c.count("1") / report["n_test"] for c in kept.values()] == pytest.approx(list(r["test_by_seed"].values()))
    assert "gain vs its random init" in capsys.readouterr().out
    # a second run into the same folder must not replace the table: refused in one line, the file untouched
    before = (tmp_path / "t" / "transfer.json").read_bytes()
    assert main(["transfer", "--quick", "--no-minilm", "--checkpoint", str(folder), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "already holds a transfer table" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "t" / "transfer.json").read_bytes() == before


def test_transfer_refuses_a_missing_checkpoint(tmp_path, capsys):
    assert main(["transfer", "--quick", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_the_tune_on_all_seeds_flag_reaches_the_protocol(tiny_review_checkpoint, monkeypatch, tmp_path):
    folder, _, _ = tiny_review_checkpoint
    seen = []
    monkeypatch.setattr(transfer, "run_transfer", lambda checkpoints, out, p, **kw: seen.append(p.tune_on_all_seeds))
    for flags in (["--tune-on-all-seeds"], []):
        assert main(["transfer", *flags, "--no-minilm", "--checkpoint", str(folder), "--out", str(tmp_path)]) == 0
    assert seen == [True, False]


def test_the_patience_flag_reaches_the_protocol_and_is_checked(tiny_review_checkpoint, monkeypatch, tmp_path, capsys):
    """With a few hundred examples an epoch is a few steps: --patience lets a learning-curve run keep its epochs."""
    folder, _, _ = tiny_review_checkpoint
    seen = []
    monkeypatch.setattr(transfer, "run_transfer", lambda checkpoints, out, p, **kw: seen.append(p.patience))
    for flags in (["--patience", "20"], []):
        assert main(["transfer", *flags, "--no-minilm", "--checkpoint", str(folder), "--out", str(tmp_path)]) == 0
    assert seen == [20, transfer.Protocol().patience]
    assert main(["transfer", "--patience", "0", "--no-minilm", "--checkpoint", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "--patience must be at least 1; got 0" in err and len(err.strip().splitlines()) == 1 and seen == [20, 3]


def test_checkpoints_alike_share_one_random_init_twin(tiny_review_checkpoint, monkeypatch, tmp_path):
    """Two checkpoints with the same config and vocabulary get one twin row, and both gains are against it; a
    checkpoint with another vocabulary gets its own (probe keys its rows the same way: transfer.shared_twins)."""
    folder, _, _ = tiny_review_checkpoint
    same = shutil.copytree(folder, tmp_path / "same")
    other = shutil.copytree(folder, tmp_path / "other")
    vocab = next(other.rglob("vocab.txt"))
    vocab.write_text(vocab.read_text(encoding="utf-8") + "zzzextra\n", encoding="utf-8")
    assert [(c, f, n) for c, f, n in transfer.shared_twins([folder, same, other])] == [
        (folder, folder, True), (same, folder, False), (other, other, True)]

    def fake_row(row, data, out, p, log):
        row.correct = np.ones((1, 2))
        return row
    monkeypatch.setattr(transfer, "run_row", fake_row)
    monkeypatch.setattr(transfer, "format_table", lambda report: "")       # the rows hold no accuracies
    data = SimpleNamespace(test=[SimpleNamespace(label=0), SimpleNamespace(label=1)])
    report = transfer._run_rows([folder, same, other], tmp_path, transfer.Protocol(), False, data, "d", lambda m: None)
    names = [(r["name"], r["baseline"]) for r in report["rows"]]
    assert names == [(f"random init (like {folder})", None), (f"pretrained: {folder}", f"random init (like {folder})"),
                     (f"pretrained: {same}", f"random init (like {folder})"),
                     (f"random init (like {other})", None), (f"pretrained: {other}", f"random init (like {other})")]


def _quick(folder, out, *flags):
    return main(["transfer", "--quick", "--no-minilm", "--checkpoint", str(folder), "--out", str(out), *flags])


@pytest.fixture
def counted_finetunes(monkeypatch):
    """The fine-tunings that really run, as (row, lr, seed)."""
    ran, real = [], transfer.finetune

    def counting(model, tokenizer, data, folder, **kw):
        ran.append((folder.parent.name, kw["lr"], kw["seed"]))
        return real(model, tokenizer, data, folder, **kw)
    monkeypatch.setattr(transfer, "finetune", counting)
    return ran


def test_a_stopped_table_resumes_with_the_runs_it_finished(tiny_review_checkpoint, tmp_path, capsys, counted_finetunes):
    """A table stopped in its last run: --resume runs that one only and gives the same table; without --resume the
    folder is refused in one line (nothing redone, nothing lost); --resume with a third seed runs only seed 2."""
    folder, _, _ = tiny_review_checkpoint
    out = tmp_path / "t"
    assert _quick(folder, out) == 0 and len(counted_finetunes) == 4
    whole = json.loads((out / "transfer.json").read_text())
    (out / "transfer.json").unlink()                                  # stopped before the table was written ...
    records = transfer.kept_runs(out)
    assert len(records) == 4
    records[-1].unlink()                                              # ... and inside its last fine-tuning
    capsys.readouterr()
    assert _quick(folder, out) == 2
    err = capsys.readouterr().err
    assert "3 finished fine-tunings" in err and "--resume" in err and len(err.strip().splitlines()) == 1
    counted_finetunes.clear()
    assert _quick(folder, out, "--resume") == 0
    assert len(counted_finetunes) == 1 and "(kept from an earlier run)" in capsys.readouterr().out
    again = json.loads((out / "transfer.json").read_text())
    for a, b in zip(whole["rows"], again["rows"]):
        assert a["test_correct_by_seed"] == b["test_correct_by_seed"] and a["dev_by_seed"] == b["dev_by_seed"]
    counted_finetunes.clear()
    assert _quick(folder, out, "--resume", "--seeds", "0,1,2") == 0
    assert sorted(seed for _, _, seed in counted_finetunes) == [2, 2]           # one new run per row
    assert all(len(r["test_by_seed"]) == 3 for r in json.loads((out / "transfer.json").read_text())["rows"])
    counted_finetunes.clear()
    assert _quick(folder, out, "--overwrite") == 0 and len(counted_finetunes) == 4     # every run redone


def test_resume_refuses_runs_made_with_other_settings(tiny_review_checkpoint, tmp_path, capsys, counted_finetunes):
    """The checker of --resume rejects what is not the run asked for: another epoch count, a checkpoint retrained
    into the same folder (its weights' bytes differ), a record that is not one; each in one line, nothing run."""
    folder, _, _ = tiny_review_checkpoint
    out = tmp_path / "t"
    assert _quick(folder, out) == 0
    counted_finetunes.clear()
    capsys.readouterr()
    assert _quick(folder, out, "--resume", "--epochs", "2") == 2
    err = capsys.readouterr().err
    assert "other settings (epochs 1 there, 2 now)" in err and len(err.strip().splitlines()) == 1
    weights = next(f for f in sorted(folder.iterdir()) if f.is_file() and f.name not in ("config.json", "vocab.txt"))
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))   # one bit flipped
    assert _quick(folder, out, "--resume") == 2
    err = capsys.readouterr().err
    assert "the starting point's files or the dataset" in err and f"pretrained--" in err
    assert counted_finetunes == []                                   # the twin's runs were reused, then refused
    transfer.kept_runs(out)[0].write_text("{}")
    assert _quick(folder, out, "--resume") == 2
    assert "is not a fine-tuning record" in capsys.readouterr().err
    assert _quick(folder, out, "--resume", "--overwrite") == 2
    assert "give one of the two" in capsys.readouterr().err
