"""The torch sides of ``bench train-step --case default-step``: one optimizer step of the default job in torch eager.

Three ways, from one Hugging Face ``BertForPreTraining`` (same config and batch as ours, ``default_step.py``):

- ``torch_rows``, the job's work: what ours' default step computes, written in torch eager. Hugging Face's
  embeddings and every layer but the last as they are; the last layer at the heads' rows only (the [CLS] rows and
  the masked rows, sorted), as ``model/attention_rows.py`` does it::

      h (B, T, H) ──key, value──> K, V (B, nh, T, d)                         every position
      h[rows] (M, H) ──query──> Q rows ──scatter──> Q (B, nh, Tq, d)          one slot per row of a sequence
      scaled_dot_product_attention(Q, K, V, padding mask, dropout) ──gather──> ctx (M, H)
      ctx ──attention.output(ctx, h[rows])──> a (M, H) ──intermediate, output(., a)──> out (M, H)

  then the pooler on the [CLS] rows of ``out``, the MLM head on its masked rows, both cross-entropies. The same
  loss and gradients as ``torch_same`` (checked without dropout in ``tests/test_bench.py``), less work.
- ``torch_same``, every position's last layer: Hugging Face's ``BertModel`` as it is, its pretraining heads with
  the MLM head on the masked rows only (what ours computes with ``last_layer_at_heads_rows`` off).
- ``torch_hf``: ``BertForPreTraining`` as users run it (the MLM head at every position, labels -100 elsewhere).

Each: the loss, ``backward``, ``clip_grad_norm_``, ``torch.optim.AdamW`` (eps 1e-6, no decay on LayerNorm and
biases, as ours), ``zero_grad(set_to_none=True)``.
"""
from __future__ import annotations

import contextlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from ..config import BertConfig
from ..model.attention_rows import query_slots
from ..runtime_env import libraries_own_defaults
from ..training.presets import BASE

JOB_LR = BASE["lr"]     # the job's peak learning rate (training/presets.py); the step's cost does not depend on it
JOB_WEIGHT_DECAY = 0.01
JOB_MAX_GRAD_NORM = 1.0


def hf_pretraining_model(cfg: BertConfig, seed: int = 0):
    """A Hugging Face ``BertForPreTraining`` of ``cfg``'s shape, in training mode."""
    import torch
    from ..hf_import import import_transformers
    transformers = import_transformers()
    torch.manual_seed(seed)
    hcfg = transformers.BertConfig(**{k: v for k, v in cfg.to_dict().items() if k != "is_decoder"})
    return transformers.BertForPreTraining(hcfg).train()


def pretraining_loss(model, batch: dict, side: str):
    """``() -> loss`` of one side (``torch_rows``, ``torch_same`` or ``torch_hf``) on ``batch`` (NumPy arrays:
    input_ids, token_type_ids, attention_mask, labels (-100 where not masked), next_sentence_label)."""
    import torch
    F = torch.nn.functional
    ids, tt, mask, labels, nsl = (torch.from_numpy(batch[k]) for k in
                                  ("input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label"))
    if side == "torch_hf":
        return lambda: model(input_ids=ids, token_type_ids=tt, attention_mask=mask, labels=labels,
                             next_sentence_label=nsl).loss
    B, T = ids.shape
    H = model.config.hidden_size
    flat = labels.reshape(-1)
    masked = torch.nonzero(flat != -100).squeeze(1)                       # (N,) the masked rows, row-major as ours
    targets = flat[masked]
    if side == "torch_same":
        def loss_same():
            seq, pooled = model.bert(input_ids=ids, token_type_ids=tt, attention_mask=mask, return_dict=True)[:2]
            mlm_logits = model.cls.predictions(seq.reshape(-1, H).index_select(0, masked))   # (N, V)
            return F.cross_entropy(mlm_logits, targets) + F.cross_entropy(model.cls.seq_relationship(pooled), nsl)
        return loss_same
    if side != "torch_rows":
        raise ValueError(f"unknown torch side {side!r}")
    if bool((flat[torch.arange(B) * T] != -100).any()):
        raise ValueError("a [CLS] row carries an MLM label: the heads' rows would count it twice")
    rows = np.union1d(masked.numpy(), np.arange(B) * T)                  # (M,) the heads' rows, sorted
    seq, slot, q_pos = (torch.from_numpy(a) for a in query_slots(rows, B, T))   # ours' slots (attention_rows.py)
    rows = torch.from_numpy(rows)
    is_cls = rows % T == 0                                                # (M,) the [CLS] rows
    Tq = q_pos.shape[1]
    trunk, last = _trunk_and_last_layer(model)
    sa = last.attention.self
    nh, d = sa.num_attention_heads, sa.attention_head_size
    keep = mask.bool().reshape(B, 1, 1, T)                                # True: attend to that key

    def loss_rows():
        h = trunk(input_ids=ids, token_type_ids=tt, attention_mask=mask).last_hidden_state    # (B, T, H)
        x = h.reshape(B * T, H).index_select(0, rows)                                          # (M, H)
        q = h.new_zeros(B, Tq, H).index_put((seq, slot), sa.query(x))                          # (B, Tq, H)
        k = sa.key(h).view(B, T, nh, d).transpose(1, 2)                                        # (B, nh, T, d)
        v = sa.value(h).view(B, T, nh, d).transpose(1, 2)
        ctx = F.scaled_dot_product_attention(q.view(B, Tq, nh, d).transpose(1, 2), k, v, attn_mask=keep,
                                             dropout_p=sa.dropout.p if model.training else 0.0,
                                             scale=sa.scaling)                                 # (B, nh, Tq, d)
        ctx = ctx.transpose(1, 2).reshape(B, Tq, H)[seq, slot]                                 # (M, H)
        a = last.attention.output(ctx, x)                                                      # dense, dropout, LN
        out = last.output(last.intermediate(a), a)                                             # FFN: (M, H)
        pooled = model.bert.pooler.activation(model.bert.pooler.dense(out[is_cls]))            # (B, H)
        mlm_logits = model.cls.predictions(out[~is_cls])                                       # (N, V)
        return F.cross_entropy(mlm_logits, targets) + F.cross_entropy(model.cls.seq_relationship(pooled), nsl)
    return loss_rows


def _trunk_and_last_layer(model):
    """(a ``BertModel`` of every layer but the last, sharing ``model``'s modules, no pooler; the last layer)."""
    import copy
    from ..hf_import import import_transformers
    transformers = import_transformers()
    layers = model.bert.encoder.layer
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = len(layers) - 1
    trunk = transformers.BertModel(cfg, add_pooling_layer=False).train(model.training)
    trunk.embeddings = model.bert.embeddings                              # shared modules: one set of parameters
    trunk.encoder.layer = type(layers)(list(layers)[:-1])
    return trunk, layers[-1]


def torch_steps(cfg: BertConfig, batch: dict, side: str):
    """``(step, info)``: ``step()`` runs one optimizer step of ``side`` in torch eager."""
    import torch
    from ..training.optim import default_no_decay
    model = hf_pretraining_model(cfg)
    named = list(model.named_parameters())                                 # the tied decoder weight once
    groups = [{"params": [p for n, p in named if not default_no_decay(n)], "weight_decay": JOB_WEIGHT_DECAY},
              {"params": [p for n, p in named if default_no_decay(n)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=JOB_LR, weight_decay=JOB_WEIGHT_DECAY, eps=1e-6)
    params = [p for _, p in named]
    loss_fn = pretraining_loss(model, batch, side)

    def step():
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, JOB_MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            raise RuntimeError(f"the benchmark's torch step diverged (loss {float(loss)})")
    return step, {"torch_threads": torch.get_num_threads(),
                  "attn_implementation": getattr(model.config, "_attn_implementation", None)}


@contextlib.contextmanager
def torch_process():
    """A one-worker pool whose process (spawned) runs torch as its users do: started with the libraries' own thread
    settings (``runtime_env.libraries_own_defaults``), not this package's ``OMP_WAIT_POLICY=PASSIVE``, which made
    torch's eager step 13-28% slower (docs/performance.md). The process starts before the settings are put back."""
    with libraries_own_defaults():
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        pool.submit(int).result()
    with pool:
        yield pool
