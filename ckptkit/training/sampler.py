"""Where a run is in its data, and a sampler that can start exactly there.

The data is one stream of batches: epoch 0's batches in the order of a permutation drawn from
``(seed, 0)``, then epoch 1's from ``(seed, 1)``, and so on. A batch is one micro-batch (one
forward/backward); ``grad_accum`` of them make one optimizer step, and accumulation windows
simply continue across epoch boundaries. The permutation depends on nothing but the seed and
the epoch, so a resumed run draws the same batches in the same order as the original, without
replaying the skipped ones and without touching any global RNG.

Vocabulary (also the checkpoint's ``data_position`` dict):

* ``epoch``: epochs completed, which is also the 0-based index of the epoch in progress
  (run_experiment.py's top-level ``epoch`` key holds the same value).
* ``batch_in_epoch``: batches of epoch ``epoch`` consumed so far, ``0..steps_per_epoch-1``.
  ``0`` means no partial epoch: at an epoch's end the position is ``(epoch + 1, 0)``.
* ``steps_per_epoch``: batches (micro-batches, data-loader steps) per epoch, like EnStack's
  ``total_batches``. Optimizer steps per epoch are ``steps_per_epoch / grad_accum``.
* ``micro_step``: batches already accumulated into the optimizer step in progress,
  ``0..grad_accum-1``; non-zero only for a checkpoint taken inside an accumulation window.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

_SEED_MIX = 0x9E3779B97F4A7C15  # keeps (seed, epoch) pairs from colliding, e.g. (1, 0) vs (0, 1)


@dataclass(frozen=True)
class DataPosition:
    epoch: int
    batch_in_epoch: int
    steps_per_epoch: int
    micro_step: int
    grad_accum: int
    sampler_seed: int
    batch_size: int
    world_size: int = 1

    @property
    def batches_consumed(self) -> int:
        """Batches consumed since the start of training (all epochs)."""
        return self.epoch * self.steps_per_epoch + self.batch_in_epoch

    def advanced(self) -> DataPosition:
        """The position after consuming one more batch."""
        epoch, batch = self.epoch, self.batch_in_epoch + 1
        if batch >= self.steps_per_epoch:
            epoch, batch = epoch + 1, 0
        return replace(self, epoch=epoch, batch_in_epoch=batch, micro_step=(self.micro_step + 1) % self.grad_accum)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataPosition:
        fields = {k: int(data[k]) for k in cls.__dataclass_fields__ if k in data}
        return cls(**fields)


@dataclass(frozen=True)
class SampledBatch:
    epoch: int
    index: int  # index of this batch within its epoch
    sample_ids: torch.Tensor  # this rank's sample indices, int64


class ResumableSampler:
    """Deterministic per-epoch permutations, sharded over ranks, startable at any batch."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, *, world_size: int = 1, rank: int = 0) -> None:
        if num_samples < batch_size * world_size:
            raise ValueError(
                f"{num_samples} samples cannot fill one batch of {batch_size} x {world_size} rank(s)"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        # drop_last: every rank sees the same number of full batches, every epoch.
        self.steps_per_epoch = num_samples // (batch_size * world_size)

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed((self.seed * _SEED_MIX + epoch) % (2**63))
        return torch.randperm(self.num_samples, generator=generator)

    def batch(self, epoch: int, index: int, permutation: torch.Tensor | None = None) -> SampledBatch:
        perm = self.permutation(epoch) if permutation is None else permutation
        global_batch = self.batch_size * self.world_size
        start = index * global_batch + self.rank * self.batch_size
        return SampledBatch(epoch, index, perm[start : start + self.batch_size].clone())

    def start_position(self, grad_accum: int = 1) -> DataPosition:
        return DataPosition(
            epoch=0, batch_in_epoch=0, steps_per_epoch=self.steps_per_epoch, micro_step=0,
            grad_accum=grad_accum, sampler_seed=self.seed, batch_size=self.batch_size,
            world_size=self.world_size,
        )

    def iterate_from(self, position: DataPosition) -> Iterator[SampledBatch]:
        """Endless stream of this rank's batches, starting with the first not yet consumed."""
        epoch, index = position.epoch, position.batch_in_epoch
        while True:
            perm = self.permutation(epoch)
            for i in range(index, self.steps_per_epoch):
                yield self.batch(epoch, i, perm)
            epoch, index = epoch + 1, 0

    def resume_warnings(self, position: DataPosition) -> list[str]:
        """Why continuing from ``position`` with this sampler would not match the original run."""
        checks = [
            ("sampler seed", position.sampler_seed, self.seed),
            ("batches per epoch", position.steps_per_epoch, self.steps_per_epoch),
            ("batch size", position.batch_size, self.batch_size),
            ("world size", position.world_size, self.world_size),
        ]
        return [
            f"data position: {what} was {saved} when saved, is {now} now; resume will not draw the same batches"
            for what, saved, now in checks
            if saved != now
        ]
