"""Benchmark: a training step of BertForPreTraining, ours (NumPy) against Hugging Face (torch eager).

    python -m bert_from_scratch.bench.train_step            # or: bert-from-scratch bench train-step

Two cases (``--case``):

``forward-backward`` (default): one forward + backward, "mini" config: 4 layers, hidden 256, 4 heads,
FFN 1024, vocab 30522, T=128, B=32, float32, CPU (``--device gpu``: our model on CuPy arrays with the
CUDA attention kernel, against Hugging Face on torch's CUDA device, both timed to a device
synchronisation).

- equal work: every position is an MLM target, so both compute the vocabulary projection at all
  B*T positions (what Hugging Face always does);
- default: ~20 masked positions per sequence, where our head runs (as google-research/bert), and the
  last layer's output dense and FFN at those rows and [CLS] only (``last_layer_at_heads_rows``).

Prints median seconds, tokens/s, model GFLOP/s, the fraction of the machine's measured
``np.matmul`` float32 rate, and ours/torch. Torch runs in a process of its own, with its libraries' own thread
settings (``runtime_env.libraries_own_defaults``: this package's ``OMP_WAIT_POLICY=PASSIVE`` slows torch's eager
steps), and glibc keeping freed memory there too unless ``--default-malloc``.

``default-step``: one optimizer step of the default pretraining job, ours (two ways) against three torch variants
(``bench/default_step.py``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from ..config import BertConfig
from ..model import BertForPreTraining
from ..cli.process import keep_freed_memory

WARMUP = 3   # steps before timing starts; the first ones fault in ~2 GB of buffers (see cli/process.py)
MINI = dict(vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)


def model_flops(cfg: BertConfig, B: int, T: int, n_predicted: int, last_layer_rows=None) -> float:
    r"""Forward + backward FLOPs of the matmuls of one step (2 per multiply-add; backward = 2x forward).

    With hidden size :math:`H`, FFN size :math:`I`, :math:`L` layers, vocabulary :math:`V`, batch
    :math:`B`, sequence length :math:`T` and :math:`N` positions where the MLM head runs
    (``n_predicted``: the masked rows for ours and the same-work torch step, :math:`B T` for
    Hugging Face's ``BertForPreTraining``):

    .. math::
        F_\text{fwd} = \underbrace{B T \cdot L\,\big(2(4H^2 + 2HI) + 4TH\big)}_{\text{Q,K,V,O and FFN linears; }
                        QK^\top \text{ and } PV}
                      + \underbrace{2N(H^2 + HV)}_{\text{MLM transform + tied decoder}}
                      + \underbrace{2B(H^2 + 2H)}_{\text{pooler + NSP}},
        \qquad F_\text{step} = 3\,F_\text{fwd}

    (a linear ``in -> out`` on :math:`n` rows is :math:`2\,n\cdot in\cdot out`; the backward computes
    the input's and the weight's gradient, twice the forward). Elementwise work (softmax, GELU,
    LayerNorm, dropout, AdamW, clipping) is not counted: this is the work the matmul rate bounds.

    ``last_layer_rows`` :math:`M`: the last layer's queries, attention core, output dense and FFN run on
    :math:`M` rows only (ours with ``BertForPreTraining.last_layer_at_heads_rows``: the [CLS] and labelled
    rows), its K and V projections on all :math:`B T`; that layer's :math:`B T \cdot (2(2H^2 + 2HI) + 4TH)`
    becomes :math:`M \cdot (2(2H^2 + 2HI) + 4TH)` (the core's unused query slots, where one sequence has fewer
    rows than another, are not counted).
    """
    H, I, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    per_token = L * (2 * (4 * H * H + 2 * H * I) + 4 * T * H)         # linears + QK^T and PV
    mlm = n_predicted * 2 * (H * H + H * V)                           # transform + tied decoder
    pooler_nsp = B * 2 * (H * H + 2 * H)
    at_rows = 2 * (2 * H * H + 2 * H * I) + 4 * T * H                 # Q, output dense, FFN, QK^T and PV, per row
    saved = 0 if last_layer_rows is None or L == 0 else (B * T - last_layer_rows) * at_rows
    return 3.0 * (B * T * per_token - saved + mlm + pooler_nsp)


def _synchronize(device: str) -> None:
    """Wait for the GPU (no-op on the CPU): a timer must not stop while kernels still run."""
    if device == "gpu":
        import cupy
        cupy.cuda.Device().synchronize()


def matmul_gflops(repeats: int = 5, device: str = "cpu") -> float:
    """float32 rate of one (4096, 256) x (256, 1024) product: np.matmul, or cupy.matmul on the GPU."""
    if device == "gpu":
        import cupy as xp
    else:
        xp = np
    a = xp.asarray(np.random.default_rng(0).standard_normal((4096, 256), dtype=np.float32))
    b = xp.asarray(np.random.default_rng(1).standard_normal((256, 1024), dtype=np.float32))
    out = xp.empty((4096, 1024), np.float32)
    times = []
    for _ in range(repeats + 1):
        _synchronize(device)
        t = time.perf_counter()
        for _ in range(10):
            xp.matmul(a, b, out=out)
        _synchronize(device)
        times.append((time.perf_counter() - t) / 10)
    return 2 * 4096 * 256 * 1024 / statistics.median(times[1:]) / 1e9


def make_batch(cfg, B, T, n_masked, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, cfg.vocab_size, (B, T))
    tt = np.zeros((B, T), dtype=np.int64)
    tt[:, T // 2:] = 1
    mask = np.ones((B, T), dtype=np.int64)
    if n_masked is None:                                   # every position is a target
        labels = rng.integers(1000, cfg.vocab_size, (B, T))
    else:
        labels = np.full((B, T), -100)
        for b in range(B):
            pos = rng.choice(np.arange(1, T - 1), size=n_masked, replace=False)
            labels[b, pos] = ids[b, pos]
    nsl = rng.integers(0, 2, B)
    return ids, tt, mask, labels, nsl


def time_ours(cfg, batch, repeats, backend, device="cpu"):
    model = BertForPreTraining(cfg, seed=0, dtype=np.float32, backend=backend if device == "cpu" else "numpy")
    if device == "gpu":
        import cupy
        model.to("cupy", backend=backend)
        batch = tuple(cupy.asarray(a) for a in batch)
    times = []
    for _ in range(repeats + WARMUP):     # warm-up runs: numba/NVRTC compile, the heap grows to its working size
        _synchronize(device)
        t = time.perf_counter()
        model.forward(*batch, training=True)
        model.backward()
        _synchronize(device)
        times.append(time.perf_counter() - t)
    return times[WARMUP:]


def time_torch_apart(cfg, batch, repeats, device="cpu", keep_memory=True):
    """:func:`time_torch` in a fresh spawned process started with the libraries' own thread settings (see the
    module's docstring); an ImportError there (no torch) is raised here."""
    from .torch_step import torch_process
    with torch_process() as pool:
        return pool.submit(_time_torch_child, cfg.to_dict(), batch, repeats, device, keep_memory).result()


def _time_torch_child(cfg_dict, batch, repeats, device, keep_memory):
    if keep_memory:
        keep_freed_memory()
    return time_torch(BertConfig(**cfg_dict), batch, repeats, device)


def time_torch(cfg, batch, repeats, device="cpu"):
    import torch
    from .torch_step import hf_pretraining_model
    target = "cuda" if device == "gpu" else "cpu"
    model = hf_pretraining_model(cfg).to(target)                # seed 0, training mode
    ids, tt, mask, labels, nsl = (torch.tensor(a).to(target) for a in batch)

    def sync():
        if target == "cuda":
            torch.cuda.synchronize()
    times = []
    for _ in range(repeats + WARMUP):
        sync()
        t = time.perf_counter()
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, token_type_ids=tt, attention_mask=mask, labels=labels, next_sentence_label=nsl)
        out.loss.backward()
        sync()
        times.append(time.perf_counter() - t)
    return times[WARMUP:]


def profile_ours(cfg, batch, backend):
    """One forward + backward of ours under cProfile, after a warm-up and three timed without it: the table of
    ``step_parts.py``."""
    from .step_parts import format_parts, profile_steps
    model = BertForPreTraining(cfg, seed=0, dtype=np.float32, backend=backend)

    def step():
        model.forward(*batch, training=True)
        model.backward()
    step()                                          # warm-up: compilation, heap growth
    times = []
    for _ in range(3):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return format_parts(f"ours, one forward + backward (backend={model.backend.name})", statistics.median(times),
                        *profile_steps(step, 1))


def run(B=32, T=128, repeats=3, masked=20, backend="auto", torch_too=True, profile=False,
        keep_memory=True, out_json=None, device="cpu"):
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu'; got {device!r}")
    if B < 1 or repeats < 1 or T < 3 or not 1 <= masked <= T - 2:
        raise ValueError(f"need batch >= 1, repeats >= 1, seq >= 3 and 1 <= masked <= seq - 2 (never [CLS] or the "
                         f"last [SEP]); got batch {B}, repeats {repeats}, seq {T}, masked {masked}")
    if device == "gpu":
        from ..nn.xp import require_gpu
        require_gpu("--device gpu")
    if keep_memory:
        keep_freed_memory()
    cfg = BertConfig(**MINI, max_position_embeddings=max(512, T))
    peak = matmul_gflops(device=device)
    rows = []
    cases = [("equal work (MLM at all positions)", None), (f"default (MLM at {masked} masked/seq)", masked)]
    for label, n_masked in cases:
        batch = make_batch(cfg, B, T, n_masked)
        n_pred = int((batch[3] != -100).sum())
        labelled = batch[3] != -100
        labelled[:, 0] = True                    # + the [CLS] rows: where ours computes the last layer's output
        flops = model_flops(cfg, B, T, n_pred, int(labelled.sum()))
        ours = statistics.median(time_ours(cfg, batch, repeats, backend, device))
        theirs = None
        if torch_too:
            try:
                theirs = statistics.median(time_torch_apart(cfg, batch, repeats, device, keep_memory))
            except ImportError:
                torch_too = False
        rows.append({"case": label, "gflop": flops / 1e9, "ours_s": ours, "torch_s": theirs,
                     "tokens_per_s": B * T / ours, "gflops": flops / ours / 1e9, "matmul_peak_gflops": peak,
                     "fraction_of_matmul": flops / ours / 1e9 / peak,
                     "ours_over_torch": None if theirs is None else ours / theirs})
    matmul_name = "cupy.matmul" if device == "gpu" else "np.matmul"
    print(f"BertForPreTraining forward+backward, mini config (L=4, H=256, heads=4, FFN=1024, V=30522), "
          f"B={B}, T={T}, float32, device={device}, backend={backend}; "
          f"{matmul_name} float32: {peak:.0f} GFLOP/s")
    head = f"{'case':<36} {'GFLOP':>6} {'ours s':>7} {'torch s':>8} {'tok/s':>7} {'GFLOP/s':>8} {'%matmul':>8} {'ours/torch':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        ts = f"{r['torch_s']:.3f}" if r["torch_s"] else "-"
        ratio = f"{r['ours_over_torch']:.2f}x" if r["ours_over_torch"] else "-"
        print(f"{r['case']:<36} {r['gflop']:>6.0f} {r['ours_s']:>7.3f} {ts:>8} {r['tokens_per_s']:>7.0f} "
              f"{r['gflops']:>8.1f} {100 * r['fraction_of_matmul']:>7.0f}% {ratio:>10}")
    if profile and device == "cpu":
        print(profile_ours(cfg, make_batch(cfg, B, T, None), backend))
    if out_json:
        with open(out_json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default="forward-backward", choices=["forward-backward", "default-step"],
                   help="forward-backward: mini config, forward+backward only (equal work and default); "
                        "default-step: one optimizer step of the default pretraining job, ours (two ways) vs three torch "
                        "variants")
    p.add_argument("--batch", type=int, default=None, help="default: 32 (forward-backward), 128 (default-step)")
    p.add_argument("--seq", type=int, default=None, help="default: 128 (forward-backward), 64 (default-step)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps; default: 3 (forward-backward), "
                                                             "5 (default-step), 20 (default-step --interleave)")
    p.add_argument("--masked", type=int, default=20,
                   help="masked positions per sequence in the default case; in default-step the most per "
                        "sequence (the job's max_predictions_per_seq; ~15%% of the tokens are masked)")
    p.add_argument("--vocab-size", type=int, default=8000, help="default-step: the vocabulary (the job's default)")
    p.add_argument("--warmup", type=int, default=WARMUP, help="default-step: untimed steps first (numba compile, heap growth)")
    p.add_argument("--rounds", type=int, default=1, help="default-step: run the sides in turn this many times; "
                                                         "a ratio per round, the median reported")
    p.add_argument("--interleave", action="store_true",
                   help="default-step: all sides alive at once, one turn each in turn (two steps, the second timed; "
                        "--repeats cycles, default 20): a ratio per cycle, the median reported; steadier than "
                        "--rounds on a noisy machine")
    p.add_argument("--gap", type=float, default=None, help="default-step --interleave: seconds of rest before each "
                                                           "turn (default 0.2)")
    p.add_argument("--backend", "--attention-backend", dest="backend", default="auto",
                   choices=["auto", "numpy", "numba", "cupy"], help="the model's backend (nn/backend.py)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                   help="gpu: our model on CuPy arrays, Hugging Face on torch's CUDA device")
    p.add_argument("--no-torch", action="store_true", help="skip the Hugging Face comparison")
    p.add_argument("--profile", action="store_true",
                   help="print a cProfile of one equal-work step; with --case default-step, where ours' two steps "
                        "spend their time, by part (--repeats steps, default 10)")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's malloc as it is (by default freed memory is kept, see cli/process.py)")
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args(argv)

    def given(value, default):
        return default if value is None else value
    if a.case == "default-step":
        from .default_step import INTERLEAVE_GAP_S, run_default_step

        if a.device != "cpu":
            p.error("--case default-step runs on the CPU only")
        if a.profile and (a.interleave or a.rounds != 1 or a.gap is not None):
            p.error("--profile runs ours' two steps in this process: without --interleave, --rounds or --gap")
        if a.backend == "cupy":
            p.error("--backend cupy needs the GPU; --case default-step runs on the CPU")
        try:
            if a.profile:
                from .step_parts import profile_default_step
                profile_default_step(given(a.batch, 128), given(a.seq, 64), given(a.repeats, 10), a.masked, a.backend,
                                     not a.default_malloc, a.vocab_size, a.warmup)
                return 0
            if a.gap is not None and not a.interleave:
                p.error("--gap applies to --interleave")
            run_default_step(given(a.batch, 128), given(a.seq, 64), given(a.repeats, 20 if a.interleave else 5),
                             a.masked, a.backend, not a.no_torch, not a.default_malloc, a.out, a.vocab_size, a.warmup,
                             rounds=a.rounds, interleave=a.interleave, gap_s=given(a.gap, INTERLEAVE_GAP_S))
        except ValueError as e:
            p.error(str(e))
        return 0
    if a.rounds != 1 or a.interleave or a.gap is not None:
        p.error("--rounds, --interleave and --gap apply to --case default-step")
    try:
        run(given(a.batch, 32), given(a.seq, 128), given(a.repeats, 3), a.masked, a.backend, not a.no_torch, a.profile,
            not a.default_malloc, a.out, a.device)
    except ValueError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
