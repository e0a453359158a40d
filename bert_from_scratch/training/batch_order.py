"""The pretraining data order: shuffled mini-batches, epoch after epoch, restorable bit for bit."""
from __future__ import annotations

import numpy as np

from ..checkpoint import CheckpointError


class BatchOrder:
    """Shuffled mini-batches, epoch after epoch, from a seeded generator — and restorable.

    Each epoch draws ``perm = rng.permutation(N)`` and yields ``perm[i*B:(i+1)*B]`` for
    ``i < N // B`` (a last partial batch is dropped so every step sees ``B`` sequences). The state
    is (generator state at the start of the epoch, epoch, position): restoring it and drawing the
    permutation again gives the very same remaining batches.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if batch_size > n:
            raise ValueError(f"batch_size ({batch_size}) is larger than the training set ({n} sequences)")
        self.n, self.batch_size = n, batch_size
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self.position = 0                          # batches already taken from this epoch
        self._epoch_start_state = self.rng.bit_generator.state
        self._perm = self.rng.permutation(n)       # (N,)

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size

    def next(self) -> np.ndarray:
        """Indices (B,) of the next batch."""
        if self.position == self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self._epoch_start_state = self.rng.bit_generator.state
            self._perm = self.rng.permutation(self.n)
        idx = self._perm[self.position * self.batch_size:(self.position + 1) * self.batch_size]
        self.position += 1
        return idx

    def state(self) -> dict:
        return {"epoch_start_rng_state": self._epoch_start_state, "epoch": self.epoch, "position": self.position,
                "n": self.n, "batch_size": self.batch_size}

    def load_state(self, state: dict) -> None:
        if state["n"] != self.n or state["batch_size"] != self.batch_size:
            raise CheckpointError(f"the checkpoint was trained on {state['n']} sequences in batches of "
                                  f"{state['batch_size']}; this run has {self.n} in batches of {self.batch_size}: "
                                  f"the batch order cannot be restored")
        self.rng.bit_generator.state = state["epoch_start_rng_state"]
        self._epoch_start_state = self.rng.bit_generator.state
        self._perm = self.rng.permutation(self.n)
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
