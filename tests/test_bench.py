"""The benchmarks run and print their tables (timings are printed, never asserted)."""
from __future__ import annotations

import json
import os

import pytest

from bert_from_scratch.bench import (attention as bench_attention, default_step, step_parts, step_products,
                                    train_step as bench_train)
from bert_from_scratch.cli import main


def test_attention_bench_table_ratios_and_skips(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_attention, "QUIET_S", 0.0)
    monkeypatch.setattr(bench_attention, "gpu_available", lambda: False)
    out = tmp_path / "bench.json"
    rows = bench_attention.run(("numpy", "numba", "cupy"), ((1, 2, 40, 16),), repeats=2, out_json=out)
    assert [(r["backend"], r["pass"]) for r in rows] == [
        ("numpy", "forward"), ("numba", "forward"), ("numpy", "forward+backward"), ("numba", "forward+backward")]
    for r in rows:
        assert r["median_ms"] > 0 and len(r["times_ms"]) == 2 and r["peak_extra_mb"] >= 0
        assert r["vs_numpy"] == pytest.approx(rows[0 if r["pass"] == "forward" else 2]["median_ms"] / r["median_ms"])
    table = capsys.readouterr().out
    assert "(skipped cupy: no usable CUDA GPU)" in table and "(skipped cupy_matmul" in table
    saved = json.loads(out.read_text())
    assert len(saved["rows"]) == 4 and set(saved["skipped"]) == {"cupy", "cupy_matmul"}
    pytest.importorskip("torch")
    rows = bench_attention.run(("numba", "torch"), ((1, 2, 40, 16),), repeats=2, print_table=False)
    assert [(r["backend"], r["pass"]) for r in rows] == [
        ("numba", "forward"), ("torch", "forward"), ("numba", "forward+backward"), ("torch", "forward+backward")]
    for r in rows:
        assert r["median_ms"] > 0 and r["vs_torch"] == pytest.approx(rows[1 if r["pass"] == "forward" else 3]["median_ms"]
                                                                     / r["median_ms"])
    assert_each_side_had_its_own_thread_settings({"ours": rows[0], "torch_rows": rows[1], "torch_same": rows[3],
                                                  "torch_hf": rows[3]})   # torch in a process of its own


def test_attention_bench_knows_torch_cuda_and_rejects_unknown_backends(capsys):
    import torch
    if not torch.cuda.is_available():
        assert bench_attention._available("torch_cuda") == "torch sees no CUDA GPU"
    with pytest.raises(SystemExit):
        bench_attention.main(["--backends", "numpy,tpu"])
    assert "unknown backend 'tpu'" in capsys.readouterr().err


def test_train_step_bench_runs_on_the_cpu_and_refuses_a_missing_gpu(capsys, monkeypatch):
    import importlib.util
    has_torch = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
    rows = bench_train.run(B=2, T=24, repeats=1, masked=4, torch_too=has_torch, keep_memory=False)
    assert len(rows) == 2 and all(r["ours_s"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    if has_torch:                  # torch timed in a process of its own (bench_train.time_torch_apart)
        assert all(r["torch_s"] > 0 and r["ours_over_torch"] == pytest.approx(r["ours_s"] / r["torch_s"]) for r in rows)
    assert "device=cpu" in capsys.readouterr().out
    import bert_from_scratch.nn.xp as xp
    monkeypatch.setattr(xp, "gpu_available", lambda: False)
    with pytest.raises(SystemExit):
        main(["bench", "train-step", "--device", "gpu"])
    assert "needs CuPy and a working CUDA GPU" in capsys.readouterr().err


def assert_each_side_had_its_own_thread_settings(by_side):
    """Ours ran under this package's OMP_WAIT_POLICY (PASSIVE unless the user chose one), torch's sides under the
    user's alone (runtime_env.libraries_own_defaults): torch's eager steps take 13-28% longer under PASSIVE."""
    from bert_from_scratch import runtime_env
    package_set = "OMP_WAIT_POLICY" in os.environ.get(runtime_env.SET_BY_PACKAGE_VARIABLE, "").split(",")
    users = None if package_set else os.environ.get("OMP_WAIT_POLICY")
    assert by_side["ours"]["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY") == ("PASSIVE" if package_set else users)
    assert all(by_side[s]["omp_wait_policy"] == users for s in ("torch_rows", "torch_same", "torch_hf"))


def test_the_thread_settings_check_rejects_torch_under_the_packages_settings(monkeypatch):
    """The check above fails on what the bench did until 2026-12-06: torch's side started in a plain spawned process,
    where its import of the package set PASSIVE before torch loaded (a planted bench: torch_process without
    libraries_own_defaults)."""
    pytest.importorskip("transformers")
    import contextlib
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    @contextlib.contextmanager
    def plain_process():
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield pool
    from bert_from_scratch import runtime_env
    set_here = {n for n in os.environ.get(runtime_env.SET_BY_PACKAGE_VARIABLE, "").split(",") if n}
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")            # as the package's import sets it, whatever the user
    monkeypatch.setenv(runtime_env.SET_BY_PACKAGE_VARIABLE, ",".join(sorted(set_here | {"OMP_WAIT_POLICY"})))
    monkeypatch.setattr(default_step, "torch_process", plain_process)
    rows = default_step.run_default_step(B=3, T=16, repeats=1, warmup=0, vocab_size=500, keep_memory=False,
                                        torch_too=True)
    by_side = {r["side"]: r for r in rows}
    assert by_side["torch_rows"]["omp_wait_policy"] == "PASSIVE"
    with pytest.raises(AssertionError):
        assert_each_side_had_its_own_thread_settings(by_side)


def test_default_step_bench_prints_ours_and_both_torch_rows_round_by_round(tmp_path, capsys):
    """The default job's optimizer step at a tiny size, each side in its own process, --rounds 2 (every side
    runs twice, in turn): the table, its numbers, and the ratio as the median of the per-round ratios."""
    import importlib.util
    has_torch = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
    out = tmp_path / "step.json"
    rows = default_step.run_default_step(B=3, T=16, repeats=1, warmup=1, vocab_size=500, keep_memory=False,
                                        torch_too=True, out_json=out, rounds=2)
    table = capsys.readouterr().out
    ours = rows[0]
    assert ours["side"] == "ours" and ours["label"] in table and "np.matmul float32" in table
    assert ours["ms_per_step"] > 0 and all(t > 0 for t in ours["times_ms"])
    assert len(ours["ms_per_round"]) == 2 and len(ours["times_ms"]) == 2 and "2 rounds" in table
    assert ours["ms_per_step"] == pytest.approx(sum(ours["ms_per_round"]) / 2)       # the median of two
    assert 0 < ours["fraction_of_matmul"] <= 1 and ours["matmul_peak_gflops"] > 0
    assert ours["products_ms"] > 0 and "the step's linear-layer products alone" in table    # step_products.py
    assert f"ours' np.matmul ({ours['products_library']}) {ours['products_ms']:.1f} ms" in table
    assert len(ours["cpu_steal_per_round"]) == 2 and all(x is None or 0 <= x <= 1 for x in ours["cpu_steal_per_round"])
    n_pred = json.loads(out.read_text())["n_predicted"]
    cfg = default_step.job_config(500, 16)
    assert ours["gflop"] == pytest.approx(bench_train.model_flops(cfg, 3, 16, n_pred, n_pred + 3) / 1e9)
    full = rows[1]                        # the same step with the last layer at every position
    assert full["side"] == "ours_full" and full["label"] in table
    assert full["gflop"] == pytest.approx(bench_train.model_flops(cfg, 3, 16, n_pred) / 1e9)
    assert full["gflop"] > ours["gflop"]
    if not has_torch:
        assert len(rows) == 2 and "torch rows skipped" in table
        pytest.skip("torch rows: torch or transformers not installed")
    assert [r["side"] for r in rows] == ["ours", "ours_full", "torch_rows", "torch_same", "torch_hf"]
    by_side = {r["side"]: r for r in rows}
    same = by_side["torch_same"]
    for r in rows:
        assert r["label"] in table and r["ms_per_step"] > 0 and r["gflops"] > 0 and r["fraction_of_matmul"] > 0
        per_round = [m / t for m, t in zip(r["ms_per_round"], same["ms_per_round"])]
        assert r["vs_torch_same_per_round"] == pytest.approx(per_round)
        assert r["vs_torch_same"] == pytest.approx(sum(per_round) / 2)
    for r, twin in zip(rows[:2], ("torch_rows", "torch_same")):   # each of ours' steps, torch doing its work
        per_round = [m / t for m, t in zip(r["ms_per_round"], by_side[twin]["ms_per_round"])]
        assert r["twin"] == twin and r["vs_twin_per_round"] == pytest.approx(per_round)
        assert r["vs_twin"] == pytest.approx(sum(per_round) / 2)
        assert f"{r['side']} / {twin} (same work), per round: " + ", ".join(f"{x:.2f}x" for x in per_round) in table
    assert all(r["vs_twin"] is None for r in rows[2:])
    assert_each_side_had_its_own_thread_settings(by_side)
    assert by_side["torch_rows"]["gflop"] == pytest.approx(ours["gflop"])       # the job's work, both sides
    theirs = by_side["torch_rows"]                            # its products timed in torch's own library
    assert theirs["products_ms"] > 0 and all(by_side[s]["products_ms"] is None for s in ("ours_full", "torch_same"))
    assert (f"torch's torch.matmul ({theirs['products_library']}) {theirs['products_ms']:.1f} ms, in each side's "
            f"process: torch's library {ours['products_ms'] / theirs['products_ms']:.2f}x as fast") in table
    assert rows[4]["gflop"] > same["gflop"] == full["gflop"]          # Hugging Face's head runs at every position
    assert len(json.loads(out.read_text())["rows"]) == 5


def test_default_step_bench_interleaved_takes_one_step_of_each_side_in_turn(capsys, monkeypatch):
    """--interleave: every side alive at once, one turn each per cycle (two steps, the second timed); a ratio per
    cycle, the median of the cycles' ratios reported, the steps' median as the side's time; the host's steal over
    all cycles named when noteworthy (a fake host taking 30% here); a side that fails names itself."""
    import importlib.util
    has_torch = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))

    class HostTook30Percent:
        def share(self):
            return 0.3
    monkeypatch.setattr(default_step, "StealMeter", HostTook30Percent)
    rows = default_step.run_default_step(B=3, T=16, repeats=3, warmup=1, vocab_size=500, keep_memory=False,
                                        torch_too=True, interleave=True, gap_s=0.0)
    table = capsys.readouterr().out
    assert "all alive at once, one turn each in turn (an untimed step, then the timed one; 3 cycles" in table
    assert "CPU steal (the VM's host's share of the CPU time) during the cycles: 30%" in table
    for r in rows:
        assert len(r["times_ms"]) == len(r["ms_per_round"]) == 3 and r["times_ms"] == r["ms_per_round"]
        assert r["ms_per_step"] == pytest.approx(sorted(r["times_ms"])[1])                # the median of three
        assert r["cpu_steal_per_round"] == [0.3] * 3
    assert rows[0]["matmul_peak_gflops"] > 0 and rows[0]["products_ms"] > 0
    assert "the step's linear-layer products alone" in table
    if has_torch:
        by_side = {r["side"]: r for r in rows}
        assert by_side["torch_rows"]["products_ms"] > 0 and "torch's torch.matmul" in table
        for r in rows[:2]:
            per_cycle = [m / t for m, t in zip(r["times_ms"], by_side["torch_same"]["times_ms"])]
            assert r["vs_torch_same_per_round"] == pytest.approx(per_cycle)
            assert r["vs_torch_same"] == pytest.approx(sorted(per_cycle)[1])
            per_cycle = [m / t for m, t in zip(r["times_ms"], by_side[r["twin"]]["times_ms"])]
            assert r["vs_twin_per_round"] == pytest.approx(per_cycle)
            assert r["vs_twin"] == pytest.approx(sorted(per_cycle)[1])
            assert f"{r['side']} / {r['twin']} (same work), cycle by cycle: quartiles" in table
        assert_each_side_had_its_own_thread_settings(by_side)
    with pytest.raises(RuntimeError, match="the benchmark's side failed: ours: ValueError: .*backend"):
        default_step.run_default_step(B=3, T=16, repeats=1, warmup=0, vocab_size=500, keep_memory=False,
                                      torch_too=False, interleave=True, gap_s=0.0, backend="no-such-backend")
    import multiprocessing
    parent, child = multiprocessing.Pipe()
    child.close()                                       # a side's process that died: EOF, named, no hang
    with pytest.raises(RuntimeError, match="side torch_hf ended without a word"):
        default_step._expect(parent, "time", "torch_hf")


def _torch_loss_and_grads(model, batch, side):
    model.zero_grad(set_to_none=True)
    from bert_from_scratch.bench import torch_step
    loss = torch_step.pretraining_loss(model, batch, side)()
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_torch_at_the_jobs_work_computes_the_same_loss_and_gradients(monkeypatch):
    """The bench's torch side doing the job's work (the last layer at the heads' rows, written in torch eager) has
    Hugging Face's loss and every gradient, dropout off; a last layer taken from the wrong place is caught."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from bert_from_scratch.bench import torch_step
    cfg = default_step.job_config(500, 16)
    batch = default_step.make_job_batch(cfg, 5, 16, seed=7)
    assert batch["attention_mask"].sum() < 5 * 16                        # padding in the batch
    model = torch_step.hf_pretraining_model(cfg).eval()
    want, want_grads = _torch_loss_and_grads(model, batch, "torch_same")
    for side in ("torch_rows", "torch_hf"):
        got, grads = _torch_loss_and_grads(model, batch, side)
        assert got == pytest.approx(want, rel=1e-6) and grads.keys() == want_grads.keys()
        for name, g in want_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    real = torch_step._trunk_and_last_layer
    monkeypatch.setattr(torch_step, "_trunk_and_last_layer",              # planted: the first layer run last
                        lambda m: (real(m)[0], m.bert.encoder.layer[0]))
    _, grads = _torch_loss_and_grads(model, batch, "torch_rows")
    assert not torch.allclose(grads["bert.encoder.layer.0.output.dense.weight"],
                              want_grads["bert.encoder.layer.0.output.dense.weight"], rtol=1e-4, atol=1e-6)
    labelled_cls = {**batch, "labels": batch["labels"].copy()}
    labelled_cls["labels"][0, 0] = 7
    with pytest.raises(ValueError, match="a \\[CLS\\] row carries an MLM label"):
        torch_step.pretraining_loss(model, labelled_cls, "torch_rows")


def test_default_step_bench_options_are_checked(capsys):
    with pytest.raises(SystemExit):
        bench_train.main(["--case", "default-step", "--device", "gpu"])
    assert "runs on the CPU only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_train.main(["--case", "default-step", "--no-torch", "--repeats", "0"])
    assert "need repeats >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_train.main(["--case", "default-step", "--no-torch", "--rounds", "0"])
    assert "rounds >= 1" in capsys.readouterr().err
    for flags in (["--rounds", "3"], ["--interleave"], ["--gap", "0.1"]):
        with pytest.raises(SystemExit):
            bench_train.main(flags)
        assert "--rounds, --interleave and --gap apply to --case default-step" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_train.main(["--case", "default-step", "--no-torch", "--interleave", "--rounds", "2"])
    assert "--interleave and --rounds exclude each other" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_train.main(["--case", "default-step", "--no-torch", "--gap", "0.1"])
    assert "--gap applies to --interleave" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_train.main(["--case", "default-step", "--no-torch", "--interleave", "--gap", "-1"])
    assert "a gap >= 0; got" in capsys.readouterr().err
    for flags, said in ((["--seq", "16"], "masked <= seq - 2"), (["--masked", "0"], "1 <= masked"),
                        (["--repeats", "0"], "repeats >= 1")):        # the forward-backward case, before any work
        with pytest.raises(SystemExit):
            bench_train.main(["--no-torch", *flags])
        assert said in capsys.readouterr().err


def test_heads_rows_bench_prints_both_settings(capsys):
    """bench heads-rows: a fine-tuning step with the last layer at [CLS] only and at every row, a time per round."""
    from bert_from_scratch.bench import heads_rows
    ms = heads_rows.run(B=3, T=8, repeats=1, rounds=2, warmup=1, vocab_size=200)
    table = capsys.readouterr().out
    assert len(ms[True]) == len(ms[False]) == 2 and all(m > 0 for m in ms[True] + ms[False])
    assert "at every row" in table and "at the [CLS] rows only" in table and "ratio (median)" in table
    with pytest.raises(SystemExit):
        heads_rows.main(["--rounds", "0"])
    assert "rounds >= 1" in capsys.readouterr().err


def test_linear_backward_bench_prints_each_pair_in_turn_and_side_by_side(capsys):
    """bench linear-backward: the default step's backward product pairs, one after the other and side by side."""
    from bert_from_scratch.bench import linear_backward
    shapes = [("small", 64, 32, 16), ("large", 4096, 256, 128)]
    ms = linear_backward.run(shapes, repeats=1, rounds=1)
    table = capsys.readouterr().out
    if linear_backward.blas_pair.numpy_openblas() is None:
        assert ms == {} and "one after the other" in table
    else:
        assert set(ms) == {"small", "large"} and all(a > 0 and b > 0 for a, b, _ in ms.values())
        assert ms["small"][2] is False and "all pairs" in table and "4096 x 256 x 128" in table
    assert [s[0] for s in linear_backward.step_shapes()][:2] == ["Q/K/V, layer 1", "attention output"]
    with pytest.raises(SystemExit):
        linear_backward.main(["--rounds", "0"])
    assert "rounds >= 1" in capsys.readouterr().err


def test_the_bench_names_the_rounds_a_vm_host_slowed():
    """No line while steal stays under 5% (or is unknown); every side's share per round once one round has more."""
    assert default_step.steal_per_round({"ours": [0.0, 0.04], "torch_same": [None, 0.01]}) == ""
    line = default_step.steal_per_round({"ours": [0.0, 0.38], "torch_same": [None, 0.02]})
    assert "per round: ours 0%, 38%; torch_same -, 2%: rounds with steal ran slower" in line


def test_step_parts_put_each_profiled_function_in_its_part():
    part_of = step_parts.part_of
    assert part_of("/x/bert_from_scratch/nn/layers.py", "linear_backward") == "linear layers: BLAS products, bias sums"
    assert part_of("/x/bert_from_scratch/nn/layers.py", "row_sum") == "linear layers: BLAS products, bias sums"
    assert part_of("/x/bert_from_scratch/nn/layers.py", "gelu_forward") == step_parts.GLUE      # the reference's
    assert part_of("/x/bert_from_scratch/nn/blas_pair.py", "matmul_pair") == \
        "linear layers: BLAS products, bias sums"                                               # a backward's pair
    assert part_of("/x/bert_from_scratch/nn/blas_pair.py", "side_by_side") == step_parts.GLUE   # its checks
    assert part_of("/x/kernels/numba_attention.py", "backward_kernel") == "attention kernels"
    assert part_of("/x/kernels/numba_attention.py", "attention_forward") == step_parts.GLUE     # its Python wrapper
    assert part_of("/x/kernels/numba_fused.py", "bias_gelu_backward_kernel") == "bias + GELU"
    assert part_of("/x/kernels/numba_fused.py", "residual_layernorm_forward_kernel") == \
        "dropout + residual + LayerNorm"
    assert part_of("/x/kernels/numba_loss.py", "cross_entropy_kernel") == "cross-entropy"
    assert part_of("/x/kernels/numba_heads.py", "stack_kernel") == "heads' split and stack"
    assert part_of("/x/kernels/numba_optim.py", "_adamw_loop") == "AdamW"
    assert part_of("/x/kernels/numba_elementwise.py", "dropout_kernel") == \
        "other Numba kernels (embeddings, LayerNorm, dropout)"
    assert part_of("~", "<method 'reshape' of 'numpy.ndarray' objects>") == step_parts.GLUE
    stats = {("/x/nn/layers.py", 26, "linear_forward"): (4, 4, 0.8, 0.8, {}),
             ("/x/kernels/numba_loss.py", 35, "cross_entropy_kernel"): (2, 2, 0.2, 0.2, {}),
             ("~", 0, "<built-in method numpy.zeros>"): (6, 6, 0.06, 0.06, {})}
    parts, glue = step_parts.split_stats(stats, steps=2)
    assert parts["linear layers: BLAS products, bias sums"] == pytest.approx(0.4)
    assert parts["cross-entropy"] == pytest.approx(0.1) and parts[step_parts.GLUE] == pytest.approx(0.03)
    assert sum(parts.values()) == pytest.approx(0.53) and len(parts) == len(step_parts.PARTS) + 1
    assert glue == [(pytest.approx(0.03), 3, "<built-in method numpy.zeros>")]


def test_default_step_profile_prints_where_both_of_ours_steps_spend_their_time(capsys):
    result = step_parts.profile_default_step(B=3, T=16, steps=2, vocab_size=500, keep_memory=False, warmup=1)
    assert set(result) == {"ours", "ours_full"}
    for step_s, parts, glue, products_s in result.values():
        assert step_s > 0 and len(parts) == len(step_parts.PARTS) + 1 and glue and products_s > 0
        for part in ("linear layers: BLAS products, bias sums", "attention kernels", "bias + GELU", "cross-entropy",
                     "AdamW", step_parts.GLUE):
            assert parts[part] > 0, part
    out = capsys.readouterr().out
    assert out.count("total under the profiler") == 2 and out.count("the same step, no profiler (median)") == 2
    alone = [line for line in out.splitlines() if line.startswith("the step's linear-layer products alone")]
    assert len(alone) == 2 and all(f"median of {step_products.REPEATS} calls" in line for line in alone)
    for line, (_, parts, _, products_s) in zip(alone, result.values()):
        in_step = parts["linear layers: BLAS products, bias sums"]
        assert line.endswith(f"{1e3 * in_step:.1f} ms for its first part inside the step")
    shares = [float(line.rsplit(None, 1)[1].rstrip("%")) for line in out.splitlines() if line.endswith("%")]
    assert len(shares) == 2 * (len(step_parts.PARTS) + 1) and sum(shares) == pytest.approx(200, abs=0.6)
    assert bench_train.main(["--case", "default-step", "--profile", "--batch", "3", "--seq", "16", "--vocab-size",
                             "500", "--repeats", "1", "--warmup", "1", "--default-malloc"]) == 0
    assert "ours, last layer at every position: backend=" in capsys.readouterr().out
    for flags in (["--interleave"], ["--rounds", "2"], ["--gap", "0.1"]):
        with pytest.raises(SystemExit):
            bench_train.main(["--case", "default-step", "--profile", *flags])
        assert "--profile runs ours' two steps in this process" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_train.main(["--case", "default-step", "--profile", "--repeats", "0"])
    assert "need repeats >= 1" in capsys.readouterr().err


def test_forward_backward_profile_prints_the_same_table(capsys):
    bench_train.run(B=2, T=16, repeats=1, masked=3, torch_too=False, profile=True, keep_memory=False)
    out = capsys.readouterr().out
    assert "ours, one forward + backward (backend=" in out and "total under the profiler" in out
    row = next(line for line in out.splitlines() if line.startswith("linear layers: BLAS products"))
    assert float(row.split()[-2]) > 0                          # its ms per step
