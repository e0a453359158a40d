"""Benchmark case ``bench train-step --case default-step``.

ONE OPTIMIZER STEP of the default pretraining job (``bert-from-scratch pretrain``:
size "tiny" = 2 layers x hidden 128, 2 heads, FFN 512, vocab 8000, T=64, B=128, ~15% of the
non-pad tokens masked with at most 20 per sequence, MLM + NSP, AdamW with weight decay 0.01,
gradient clipping at 1.0), CPU only, five sides, each in its own process (``multiprocessing``
spawn; glibc keeping freed memory, see cli/process.py, unless ``--default-malloc``; torch's sides with the
libraries' own thread settings, ours with the package's: runtime_env.py, :func:`_environment`):

- ours: :func:`bert_from_scratch.training.loop.train_step` (the job's own step) with
  :class:`~bert_from_scratch.training.optim.AdamW`; the last layer's queries, attention core, output dense and
  FFN at the heads' rows only ([CLS] and the masked rows: ``BertForPreTraining.last_layer_at_heads_rows``, as the
  job runs);
- ours with the last layer at every position (``ours_full``);
- torch eager doing each of those two steps' work (``torch_rows``: the job's, ``torch_same``: the last layer
  everywhere, the MLM head on the masked rows only), and torch ``BertForPreTraining`` as users run it (the LM head
  at every position), each with the same optimizer step (``torch_step.py``).

Prints the median ms per step of ``--repeats`` timed steps (after warm-up steps: numba compile, heap
growth), the ratio of each of ours' steps to torch doing the same work (``TWINS``) and to ``torch_same``, and
each side's matmul GFLOP/s (see :func:`model_flops`) as a share of the ``np.matmul`` float32 rate measured in the
same run (in ours' process), what the step's linear-layer products alone take in ours' library and in torch's
(``step_products.py``: each side's process times them after its steps), and, when the VM's host took a noticeable
share of the CPU time during a round (CPU steal, ``cpu_steal.py``), each side's steal per round: such rounds say
more about the host than about the code.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from ..config import BertConfig
from ..model import BertForPreTraining
from ..nn import blas_pair
from ..cli.process import keep_freed_memory
from ..runtime_env import libraries_own_defaults
from .cpu_steal import NOTEWORTHY, StealMeter
from .step_products import REPEATS as PRODUCT_REPEATS, TIMED_SIDES, job_products, products_flops, side_products
from .torch_step import JOB_LR, JOB_MAX_GRAD_NORM, JOB_WEIGHT_DECAY, torch_process, torch_steps
from .train_step import WARMUP, model_flops, matmul_gflops

TWINS = {"ours": "torch_rows", "ours_full": "torch_same"}   # each of ours' steps and torch's doing its work
INTERLEAVE_GAP_S = 0.2  # rest before each interleaved turn: OpenBLAS's idle threads spin ~0.1 s before they sleep
SIDES = {"ours": "ours: train_step + AdamW (last layer at heads' rows)",
         "ours_full": "ours, last layer at every position",
         "torch_rows": "torch eager, the job's work (last layer at rows)",
         "torch_same": "torch eager, last layer everywhere (MLM at masked)",
         "torch_hf": "torch BertForPreTraining (MLM at all positions)"}


def job_config(vocab_size: int = 8000, T: int = 64) -> BertConfig:
    """The default job's model: ``model_config("tiny", ...)`` of training/pretrain_job.py."""
    from ..training.pretrain_job import model_config
    return model_config("tiny", vocab_size, T)


def make_job_batch(cfg: BertConfig, B: int, T: int, max_predictions: int = 20, masked_lm_prob: float = 0.15,
                   short_seq_prob: float = 0.1, seed: int = 0) -> dict:
    """A batch shaped like the job's (data/pretraining.py): most sequences fill T, ``short_seq_prob`` of
    them are shorter (padded); ``min(max_predictions, max(1, round(len * masked_lm_prob)))`` positions
    of each, among all but [CLS] and the last [SEP], carry an MLM label (-100 elsewhere)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((B, T), dtype=np.int64)
    tt = np.zeros((B, T), dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    labels = np.full((B, T), -100, dtype=np.int64)
    lo = min(5, cfg.vocab_size - 1)
    for b in range(B):
        n_tok = T if rng.random() >= short_seq_prob else int(rng.integers(min(5, T), T + 1))
        ids[b, :n_tok] = rng.integers(lo, cfg.vocab_size, n_tok)
        tt[b, n_tok // 2:n_tok] = 1
        mask[b, :n_tok] = 1
        n_pred = min(max_predictions, max(1, int(round(n_tok * masked_lm_prob))), max(1, n_tok - 2))
        pos = rng.choice(np.arange(1, max(2, n_tok - 1)), size=n_pred, replace=False)
        labels[b, pos] = rng.integers(lo, cfg.vocab_size, n_pred)
    nsl = rng.integers(0, 2, B).astype(np.int64)
    return {"input_ids": ids, "token_type_ids": tt, "attention_mask": mask, "labels": labels,
            "next_sentence_label": nsl}


def _median(values):
    return None if values is None else statistics.median(values)


def _time_steps(step, repeats: int, warmup: int) -> list[float]:
    times = []
    for _ in range(warmup + repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times[warmup:]


def _ours_steps(cfg: BertConfig, batch: dict, backend: str, heads_rows: bool = True):
    from ..training.loop import train_step
    from ..training.optim import AdamW
    model = BertForPreTraining(cfg, seed=0, backend=backend)               # as training/pretrain_job.py builds it
    model.last_layer_at_heads_rows = heads_rows
    optimizer = AdamW(model.params, lr=JOB_LR, weight_decay=JOB_WEIGHT_DECAY, backend=model.backend)

    def step():
        result = train_step(model, batch, optimizer, JOB_LR, max_grad_norm=JOB_MAX_GRAD_NORM)
        if result.diverged:
            raise RuntimeError(f"the benchmark's step diverged: {result.what_diverged()}")
    return step, {"backend": model.backend.name}


def _environment(side: str):
    """The environment an interleaved side's process starts in (a pipe-driven ``Process``, not a pool: the rounds mode
    uses ``torch_step.torch_process``): torch's sides as torch's users run it (its OpenMP threads' own waits, not this
    package's ``OMP_WAIT_POLICY=PASSIVE``: runtime_env.py), ours' as the package sets it."""
    return libraries_own_defaults() if side.startswith("torch") else contextlib.nullcontext()


def _build_side(side: str, cfg_dict: dict, batch: dict, backend: str, keep_memory: bool):
    """In a side's own process: glibc told to keep freed memory (or not), then the side's ``(step, info)``, with
    ``info["keep_freed_memory"]``."""
    kept = keep_freed_memory() if keep_memory else False
    cfg = BertConfig(**cfg_dict)
    step, info = (_ours_steps(cfg, batch, backend, side == "ours") if side.startswith("ours")
                  else torch_steps(cfg, batch, side))
    if side.startswith("ours"):                                     # one more warm-up step, counting its pairs
        before = blas_pair.pairs_run
        step()
        info["blas_pairs"] = blas_pair.pairs_run - before
    info["keep_freed_memory"] = kept
    info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")     # the side's OpenMP threads read it at load
    return step, info


def _side_worker(side: str, cfg_dict: dict, batch: dict, repeats: int, warmup: int, backend: str,
                 keep_memory: bool, measure_matmul: bool) -> dict:
    """Runs in a fresh process: build one side, warm it up, time ``repeats`` steps."""
    step, info = _build_side(side, cfg_dict, batch, backend, keep_memory)
    steal = StealMeter()
    times = _time_steps(step, repeats, warmup)
    info.update(times_s=times, cpu_steal_share=steal.share())
    if measure_matmul:
        info["matmul_gflops"] = matmul_gflops()
    info.update(side_products(side, BertConfig(**cfg_dict), batch))
    return info


def _side_server(conn, side: str, cfg_dict: dict, batch: dict, warmup: int, backend: str, keep_memory: bool,
                 measure_matmul: bool) -> None:
    """Runs in a fresh process for ``--interleave``: build one side, warm it up, say "ready", then per "step" message
    run two steps and time the second, until "stop"; then (``ours`` only) measure the matmul rate and send the
    side's facts."""
    try:
        step, info = _build_side(side, cfg_dict, batch, backend, keep_memory)
        _time_steps(step, 0, warmup)
        conn.send(("ready", None))
        while conn.recv() == "step":
            step()                                  # untimed: the side's thread pools wake and its caches fill,
            t = time.perf_counter()                 # so the timed step follows a step, as in training
            step()
            conn.send(("time", time.perf_counter() - t))
        info["matmul_gflops"] = matmul_gflops() if measure_matmul else None
        info.update(side_products(side, BertConfig(**cfg_dict), batch))
        conn.send(("info", info))
    except (EOFError, BrokenPipeError):                      # the parent stopped (another side failed): quietly
        return
    except Exception as e:                                   # noqa: BLE001 (reported by the parent, then raised)
        conn.send(("error", f"{side}: {type(e).__name__}: {e}"))


def _interleaved_runs(sides, cfg_dict, batch, repeats, warmup, backend, keep_memory, gap_s) -> dict:
    """``--interleave``: every side alive at once, each in its own process; one turn of each in turn (the order
    reversed every other cycle, ``gap_s`` of rest before each turn so that no side's idle threads still spin), so
    that each cycle's steps meet the same machine. A turn is two steps, the second timed: a step timed straight
    after a rest ran ~5% slower for ours here (OpenBLAS's and Numba's threads asleep, caches cold), and training
    runs its steps back to back. Returns ``side -> [one result per timed step]``, the shape of
    ``run_default_step``'s rounds: each step is its own round, each cycle's ratio its own."""
    spawn = multiprocessing.get_context("spawn")
    conns, procs = {}, []
    try:
        for side in sides:
            parent, child = spawn.Pipe()
            proc = spawn.Process(target=_side_server, args=(child, side, cfg_dict, batch, warmup, backend,
                                                            keep_memory, side == "ours"), daemon=True)
            with _environment(side):
                proc.start()
            child.close()                           # ours closed: the side's end is then the only one, and
            conns[side] = parent                    # a side that dies is an EOF here, not a wait forever
            procs.append(proc)
            _expect(parent, "ready", side)          # one warm-up at a time: no side compiles while another runs
        times = {side: [] for side in sides}
        steal = StealMeter()                        # over all cycles: a 0.2 s step is only ~40 ticks of 10 ms
        for cycle in range(repeats):
            for side in (sides if cycle % 2 == 0 else sides[::-1]):
                time.sleep(gap_s)
                conns[side].send("step")            # two steps, the second timed
                times[side].append(_expect(conns[side], "time", side))
        stolen = steal.share()
        infos = {}
        for side in sides:
            conns[side].send("stop")
            infos[side] = _expect(conns[side], "info", side)
    finally:
        for conn in conns.values():               # a side still waiting for a message gets EOF and ends
            conn.close()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    peak = infos["ours"]["matmul_gflops"]
    return {side: [{**infos[side], "times_s": [t], "cpu_steal_share": stolen, "matmul_gflops": peak}
                   for t in times[side]] for side in sides}


def _expect(conn, kind: str, side: str):
    """The payload of the next message from a side's process, which must be ``kind`` (its error raised here)."""
    try:
        got, payload = conn.recv()
    except EOFError:
        raise RuntimeError(f"the benchmark's side {side} ended without a word (killed, or out of memory?)") from None
    if got == "error":
        raise RuntimeError(f"the benchmark's side failed: {payload}")
    if got != kind:
        raise RuntimeError(f"the benchmark's side sent {got!r}, expected {kind!r}")
    return payload


def steal_per_round(steals: dict) -> str:
    """``{side: [CPU steal share per round, or None]}`` -> a line naming every side's steal per round, or "" when no
    round had a noteworthy share (bench/cpu_steal.py)."""
    if not any(x is not None and x >= NOTEWORTHY for v in steals.values() for x in v):
        return ""
    return ("CPU steal (the VM's host's share of the CPU time) during each side's steps, per round: "
            + "; ".join(f"{side} " + ", ".join("-" if x is None else f"{x:.0%}" for x in v)
                        for side, v in steals.items())
            + ": rounds with steal ran slower than this machine can, and their ratios are unreliable")


def _products_line(by_side: dict, gflop: float) -> str:
    """What the step's linear-layer products alone cost in each side's library (step_products.py)."""
    ours, theirs = by_side["ours"], by_side.get("torch_rows")
    line = (f"the step's linear-layer products alone ({gflop:.2f} of its {ours['gflop']:.2f} GFLOP; each product's "
            f"median of {PRODUCT_REPEATS} calls, summed; bench/step_products.py): ours' np.matmul "
            f"({ours['products_library']}) {ours['products_ms']:.1f} ms")
    if theirs is None:
        return line
    return (line + f", torch's torch.matmul ({theirs['products_library']}) {theirs['products_ms']:.1f} ms, in each "
            f"side's process: torch's library {ours['products_ms'] / theirs['products_ms']:.2f}x as fast; ours' "
            f"products alone take {ours['products_ms'] / theirs['ms_per_step']:.2f}x of torch's step doing the "
            f"job's work")


def run_default_step(B=128, T=64, repeats=5, max_predictions=20, backend="auto", torch_too=True,
                     keep_memory=True, out_json=None, vocab_size=8000, warmup=WARMUP, seed=0, rounds=1,
                     interleave=False, gap_s=INTERLEAVE_GAP_S):
    """One optimizer step of the default job: ours two ways, torch three ways (:data:`SIDES`); prints a table.

    Each side runs in its own spawned process, one after the other; ``rounds`` > 1 repeats that sequence
    (ours, ours, torch, torch, torch, ours, ...) so that each round gives its own side-by-side ratios: the
    machine's drift between processes moves single ratios by +-10% here. A side's time is the median over
    rounds of its per-round medians, a ratio the median of its per-round ratios. Returns the rows
    (dicts); the torch rows are left out when torch or transformers is not installed (or ``torch_too``
    is False).

    ``interleave``: instead, every side's process is alive at once and they take one turn each in turn (two steps,
    the second timed), ``repeats`` cycles (:func:`_interleaved_runs`); a side's time is the median of its timed
    steps, its ratio the median of the cycles' ratios. Noise that lasts seconds (a busy neighbour on the VM's host)
    then falls on both sides of a ratio alike: on a noisy 2-vCPU Intel VM (2026-12-05) two runs with rounds gave
    0.87x and 0.69x at equal work, six interleaved runs 0.71x-0.80x (four of them with one-step turns;
    docs/performance.md)."""
    if interleave and rounds != 1:
        raise ValueError("--interleave and --rounds exclude each other: an interleaved run's cycles are its rounds")
    if repeats < 1 or warmup < 0 or B < 1 or T < 8 or max_predictions < 1 or rounds < 1 or gap_s < 0:
        raise ValueError(f"need repeats >= 1, warmup >= 0, batch >= 1, seq >= 8, masked >= 1, rounds >= 1 and a gap "
                         f">= 0; got "
                         f"repeats {repeats}, warmup {warmup}, batch {B}, seq {T}, masked {max_predictions}, "
                         f"rounds {rounds}, gap {gap_s}")
    cfg = job_config(vocab_size, T)
    batch = make_job_batch(cfg, B, T, max_predictions, seed=seed)
    n_pred = int((batch["labels"] != -100).sum())
    n_tokens = int(batch["attention_mask"].sum())
    heads_rows = n_pred + B                      # the masked rows and the [CLS] rows (never masked here)
    sides = ["ours", "ours_full"]
    skipped = None
    if torch_too:
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            skipped = f"torch rows skipped: {', '.join(missing)} not installed"
        else:
            sides += ["torch_rows", "torch_same", "torch_hf"]
    runs = {side: [] for side in sides}          # side -> one worker result per round
    spawn = multiprocessing.get_context("spawn")
    if interleave:
        runs = _interleaved_runs(sides, cfg.to_dict(), batch, repeats, warmup, backend, keep_memory, gap_s)
    for _ in range(0 if interleave else rounds):
        for side in sides:                        # a fresh process each: no thread pool, heap or JIT shared
            with (torch_process() if side.startswith("torch") else
                  ProcessPoolExecutor(max_workers=1, mp_context=spawn)) as pool:
                runs[side].append(pool.submit(_side_worker, side, cfg.to_dict(), batch, repeats, warmup, backend,
                                              keep_memory, side == "ours").result())
    medians = {side: [statistics.median(r["times_s"]) for r in runs[side]] for side in sides}   # per round
    peak = statistics.median(r["matmul_gflops"] for r in runs["ours"])
    rows = []
    for side in sides:
        med = statistics.median(medians[side])
        ratios = {to: [m / t for m, t in zip(medians[side], medians[to])] if to in medians else None
                  for to in ("torch_same", TWINS.get(side))}      # per round
        flops = model_flops(cfg, B, T, B * T if side == "torch_hf" else n_pred,
                            heads_rows if side in ("ours", "torch_rows") else None)
        rows.append({"side": side, "label": SIDES[side], "ms_per_step": 1e3 * med,
                     "times_ms": [1e3 * t for r in runs[side] for t in r["times_s"]],
                     "ms_per_round": [1e3 * m for m in medians[side]],
                     "vs_torch_same": _median(ratios["torch_same"]),
                     "vs_torch_same_per_round": ratios["torch_same"],
                     "twin": TWINS.get(side), "vs_twin": _median(ratios[TWINS.get(side)]),
                     "vs_twin_per_round": ratios[TWINS.get(side)],
                     "gflop": flops / 1e9, "gflops": flops / med / 1e9, "matmul_peak_gflops": peak,
                     "fraction_of_matmul": flops / med / 1e9 / peak,
                     "cpu_steal_per_round": [r["cpu_steal_share"] for r in runs[side]],
                     "products_ms": (1e3 * statistics.median(r["products_s"] for r in runs[side])
                                     if side in TIMED_SIDES else None),
                     **{k: v for k, v in runs[side][0].items()
                        if k not in ("times_s", "matmul_gflops", "cpu_steal_share", "products_s")}})
    kept = runs["ours"][0]["keep_freed_memory"]
    torch_info = runs["torch_same"][0] if "torch_same" in runs else {}
    print(f"One optimizer step of the default pretraining job: tiny config (L={cfg.num_hidden_layers}, "
          f"H={cfg.hidden_size}, heads={cfg.num_attention_heads}, FFN={cfg.intermediate_size}, V={cfg.vocab_size}), "
          f"B={B}, T={T}, {n_tokens} non-pad tokens, {n_pred} MLM rows (<= {max_predictions}/seq), MLM + NSP, "
          f"AdamW (wd {JOB_WEIGHT_DECAY}), clip {JOB_MAX_GRAD_NORM}, float32, CPU")
    if interleave:
        how = (f"each side in its own process (multiprocessing spawn), all alive at once, one turn each in turn "
               f"(an untimed step, then the timed one; {repeats} cycles, the order reversed every other cycle, "
               f"{gap_s:g} s of rest before each turn; medians over cycles)")
    else:
        how = ("each side in its own process (multiprocessing spawn), one after the other"
               + (f", {rounds} rounds (medians over rounds)" if rounds > 1 else ""))
    print(how + "; glibc keeping freed memory: "
          f"{'yes' if kept else 'no'}; median of {repeats} timed step(s) after {warmup} warm-up step(s); "
          f"ours backend={runs['ours'][0]['backend']}, {runs['ours'][0].get('blas_pairs', 0)} backward product "
          f"pairs side by side a step (nn/blas_pair.py)"
          + (f"; torch threads={torch_info['torch_threads']}, attention={torch_info['attn_implementation']}, "
             f"OMP_WAIT_POLICY={torch_info.get('omp_wait_policy') or 'unset'} (ours: "
             f"{runs['ours'][0].get('omp_wait_policy') or 'unset'})" if torch_info else ""))
    print(f"np.matmul float32 (4096x256 @ 256x1024, in ours' process): {peak:.0f} GFLOP/s"
          + (" (per round: " + ", ".join(f"{r['matmul_gflops']:.0f}" for r in runs["ours"]) + ")"
             if rounds > 1 and not interleave else ""))
    print(_products_line({r["side"]: r for r in rows}, products_flops(job_products(cfg, batch)) / 1e9))
    head = (f"{'side':<51} {'ms/step':>8} {'vs torch, same work':>19} {'vs torch same':>13} {'GFLOP':>6} "
            f"{'GFLOP/s':>8} {'% np.matmul':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        twin, same = ("-" if x is None else f"{x:.2f}x" for x in (r["vs_twin"], r["vs_torch_same"]))
        print(f"{r['label']:<51} {r['ms_per_step']:>8.1f} {twin:>19} {same:>13} {r['gflop']:>6.2f} "
              f"{r['gflops']:>8.1f} {100 * r['fraction_of_matmul']:>10.1f}%")
    print("(vs torch, same work: ours / torch's job's work, ours at every position / torch same; "
          "vs torch same: / torch with the last layer everywhere)")
    for r in rows[:2]:
        per = r["vs_twin_per_round"]
        if per is None or not (rounds > 1 or interleave and repeats > 1):
            continue
        what = f"{r['side']} / {r['twin']} (same work)"
        if interleave:
            quartiles = statistics.quantiles(per, n=4, method="inclusive")
            print(f"{what}, cycle by cycle: quartiles " + ", ".join(f"{x:.2f}x" for x in quartiles)
                  + f", range {min(per):.2f}x-{max(per):.2f}x")
        else:
            print(f"{what}, per round: " + ", ".join(f"{x:.2f}x" for x in per)
                  + f" ({r['side']} {', '.join(f'{m:.0f}' for m in r['ms_per_round'])} ms)")
    if interleave:
        share = runs["ours"][0]["cpu_steal_share"]
        stolen = (f"CPU steal (the VM's host's share of the CPU time) during the cycles: {share:.0%}: every side ran "
                  f"slower than this machine can" if share is not None and share >= NOTEWORTHY else "")
    else:
        stolen = steal_per_round({side: [r["cpu_steal_share"] for r in runs[side]] for side in sides})
    if stolen:
        print(stolen)
    if skipped:
        print(f"({skipped})")
    if out_json:
        with open(out_json, "w") as f:
            json.dump({"B": B, "T": T, "n_predicted": n_pred, "matmul_gflops": peak, "rounds": rounds,
                       "interleave": interleave, "rows": rows, "skipped": skipped}, f, indent=2)
    return rows
