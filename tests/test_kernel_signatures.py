"""One compiled signature per dtype for every Numba kernel.

Numba compiles a kernel anew for every distinct argument type, and a read-only array, an omitted default or a
float64 scalar where a float32 one came before are distinct types: each costs a compilation of seconds (on a
fresh clone, or in a user's first run) and one more cached file. A fresh process trains through every path
of the model (batch of one and of several, dropout on and off, the last layer at the heads' rows and at every
row, a classifier, AdamW) in float32 and float64 and reports each kernel's signatures.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    from numba.core.registry import CPUDispatcher
    from bert_from_scratch.bench.default_step import make_job_batch
    from bert_from_scratch.config import BertConfig
    from bert_from_scratch.model import BertForPreTraining, BertForSequenceClassification
    from bert_from_scratch.nn.backend import get_backend
    from bert_from_scratch.training.loop import train_step
    from bert_from_scratch.training.optim import AdamW
    from bert_from_scratch.kernels import (kernel_args, numba_attention, numba_elementwise, numba_fused,
                                           numba_heads, numba_loss, numba_optim)

    cfg = BertConfig(vocab_size=8192, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=16)
    backend = get_backend("numba")
    for dtype in (np.float32, np.float64):
        for B in (1, 3):
            for at_rows in (True, False):
                for dropout in (0.0, 0.1):
                    c = BertConfig(**{**cfg.to_dict(), "hidden_dropout_prob": dropout,
                                      "attention_probs_dropout_prob": dropout})
                    model = BertForPreTraining(c, seed=0, backend=backend, dtype=dtype)
                    model.last_layer_at_heads_rows = at_rows
                    opt = AdamW(model.params, lr=1e-3, weight_decay=0.01, backend=model.backend)
                    train_step(model, make_job_batch(c, B, 12, short_seq_prob=0.5), opt, lr=1e-3, max_grad_norm=1.0)
                    clf = BertForSequenceClassification(c, num_labels=2, seed=0, backend=backend, dtype=dtype)
                    ids = np.full((B, 12), 7); mask = np.ones((B, 12), np.int64); mask[0, 9:] = 0
                    clf.forward(ids, np.zeros_like(ids), mask, labels=np.zeros(B, np.int64), training=True)
                    clf.backward()
    report = {}
    for module in (kernel_args, numba_attention, numba_elementwise, numba_fused, numba_heads, numba_loss,
                   numba_optim):
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and obj.signatures:
                report[f"{module.__name__.rsplit('.', 1)[1]}.{name}"] = [str(s) for s in obj.signatures]
    print(json.dumps(report))
""")


def kernel_signatures() -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def extra_signatures(report: dict) -> dict:
    """Kernels compiled more than once for one dtype (the float type of their first array argument, if any)."""
    extra = {}
    for name, signatures in report.items():
        per_dtype = {}
        for s in signatures:
            key = "float64" if "float64" in s.split(",")[0] else "float32" if "float32" in s.split(",")[0] else s
            per_dtype.setdefault(key, []).append(s)
        extra.update({f"{name} ({k})": v for k, v in per_dtype.items() if len(v) > 1})
    return extra


def test_every_numba_kernel_has_one_signature_per_dtype():
    report = kernel_signatures()
    assert {"numba_attention.forward_kernel", "numba_attention.backward_kernel", "numba_loss.cross_entropy_kernel",
            "numba_fused.residual_layernorm_forward_kernel", "numba_fused.residual_layernorm_backward_kernel",
            "numba_elementwise.dropout_kernel", "numba_optim._adamw_parallel",
            "numba_optim._adamw_serial", "numba_heads.split_kernel", "numba_heads.stack_kernel"} <= set(report)
    assert all(1 <= len(s) <= 2 for s in report.values()), report
    assert extra_signatures(report) == {}


def test_the_check_finds_a_second_signature_of_one_dtype():
    """The planted case: a read-only q_pos and a float64 scale beside float32 arrays, as before the fix."""
    report = {"numba_attention.forward_kernel": ["(Array(float32, 3, 'C', False), Array(int64, 2, 'C', True))",
                                                 "(Array(float32, 3, 'C', False), Array(int64, 2, 'C', False))",
                                                 "(Array(float64, 3, 'C', False), Array(int64, 2, 'C', False))"],
              "numba_fused.f": ["(Array(float32, 2, 'C', False), float32)", "(Array(float32, 2, 'C', False), float64)"],
              "kernel_args.mix32_int": ["(int64,)"]}
    assert set(extra_signatures(report)) == {"numba_attention.forward_kernel (float32)", "numba_fused.f (float32)"}
