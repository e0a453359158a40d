r"""ZeRO stage 1: the AdamW moments split over the ranks, the update made once, its result gathered.

Replicated data parallelism keeps on every rank the parameters :math:`\theta` (P numbers), the gradients
(P) and AdamW's two moments :math:`m, v` (2P): 4P numbers. The moments are the largest part, and every rank
computes the very same update from them. ZeRO-1 (Rajbhandari et al., 2020) gives each rank the moments of
about 1/N of the parameters: rank r updates only its tensors, then an ``Allgatherv`` hands every rank the
updated values of all of them. Per rank: :math:`P + P + 2P/N` numbers; the update of each tensor is the
same arithmetic as before, so the parameters are *bit-identical* to replicated AdamW's.

Tensors are dealt whole (no tensor is cut), greedily to the rank with the fewest values so far, in the
parameters' order: every rank computes the same assignment.

Checkpoints keep the replicated format (``optimizer.safetensors`` with every moment): :meth:`consolidate`
(called on every rank) gathers the moments on rank 0 before it saves; :meth:`load_state_dict` keeps this
rank's part of a full state.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..nn.xp import to_numpy
from ..training.optim import AdamW, check_frozen
from .world import World


def assign(sizes: list[int], n_ranks: int) -> list[int]:
    """Owner rank of each tensor: greedy, to the least loaded rank (ties: the lowest rank)."""
    load = [0] * n_ranks
    owners = []
    for size in sizes:
        r = min(range(n_ranks), key=lambda i: (load[i], i))
        owners.append(r)
        load[r] += size
    return owners


class ShardedAdamW:
    """AdamW with its state sharded over ``world`` (same constructor options as :class:`AdamW`)."""

    def __init__(self, params: dict, world: World, frozen=(), **adamw_options):
        self.params, self.world = params, world
        names = list(params)
        check_frozen(params, frozen)                  # here: a shard's AdamW sees only its own names
        self.owner = dict(zip(names, assign([int(params[n].size) for n in names], world.size)))
        self.mine = [n for n in names if self.owner[n] == world.rank]
        self.inner = AdamW({n: params[n] for n in self.mine}, frozen=[n for n in frozen if n in self.mine],
                           **adamw_options) if self.mine else None
        dtype = next(iter(params.values())).dtype
        self._flat = {r: np.empty(sum(int(params[n].size) for n in names if self.owner[n] == r), dtype=dtype)
                      for r in range(world.size)}
        self._consolidated = None
        self.step_count = 0

    @property
    def state_bytes(self) -> int:
        """Bytes of AdamW moments this rank holds (replicated AdamW: ``2 x`` the parameters' bytes)."""
        return 0 if self.inner is None else sum(m.nbytes for m in self.inner.exp_avg.values()) * 2

    def step(self, grads: Mapping, lr: float | None = None, grad_scale: float = 1.0) -> bool:
        """Update this rank's tensors, then gather every rank's updated tensors (``Allgatherv``). Returns whether
        every tensor is finite afterwards: the same answer on every rank, which all hold the same gathered values."""
        if self.inner is not None:                  # its finite answer covers this rank's tensors only: the
            #                                           gathered values below answer for all, alike on every rank
            self.inner.step({n: grads[n] for n in self.mine}, lr=lr, grad_scale=grad_scale)
        self.step_count += 1
        order = list(self.params)
        mine = self._flat[self.world.rank]
        offset = 0
        for n in self.mine:
            mine[offset:offset + self.params[n].size] = to_numpy(self.params[n]).reshape(-1)
            offset += self.params[n].size
        gathered = self.world.allgatherv_([self._flat[r] for r in range(self.world.size)], self.world.rank)
        offsets = {r: 0 for r in range(self.world.size)}
        for n in order:
            r = self.owner[n]
            if r != self.world.rank:
                p = self.params[n]
                p[...] = gathered[r][offsets[r]:offsets[r] + p.size].reshape(p.shape)
            offsets[r] += self.params[n].size
        return all(bool(np.isfinite(part).all()) for part in gathered)

    # ---- checkpoints: the replicated format ---------------------------------------------------
    def consolidate(self) -> None:
        """Every rank: gather the moments on rank 0, for its next :meth:`state_dict`."""
        part = self.inner.state_dict() if self.inner is not None else {}
        part.pop("step", None)
        parts = self.world.allgather(part)
        if self.world.is_root:
            self._consolidated = {k: v for p in parts for k, v in p.items()}
            self._consolidated["step"] = np.array([self.step_count], dtype=np.int64)

    def state_dict(self) -> dict:
        """Rank 0, after :meth:`consolidate`: the state :class:`AdamW` would save."""
        if self._consolidated is None:
            raise RuntimeError("call consolidate() on every rank before state_dict() on rank 0")
        state, self._consolidated = self._consolidated, None
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Keep this rank's part of a full (replicated) state."""
        expected = {"step"} | {f"{k}.{n}" for n in self.params for k in ("exp_avg", "exp_avg_sq")}
        if set(state) != expected:
            raise ValueError("optimizer state does not match the parameters")
        if self.inner is not None:
            self.inner.load_state_dict({k: v for k, v in state.items()
                                        if k == "step" or k.split(".", 1)[1] in self.mine})
        self.step_count = int(np.asarray(state["step"]).reshape(-1)[0])
