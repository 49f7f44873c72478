"""Built-in synthetic interaction sequences, deterministic from a seed; nothing downloaded.

Items are split into ``num_clusters`` taste clusters. Each user walks through one cluster,
mostly to the cluster's next item (a sequential pattern a recurrent model can learn), sometimes
to a random item. Training samples are the windows of ``seq_len`` items with the item that
follows; validation asks for each user's last (held-out) item given the ``seq_len`` before it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainers.recsys.config import RecsysConfig

_FOLLOW = 0.8  # share of steps to the cluster's next item


@dataclass(frozen=True)
class Sequences:
    train_windows: torch.Tensor  # int64 [N, seq_len]: history; sample i is (train_windows[i], train_targets[i])
    train_targets: torch.Tensor  # int64 [N]
    val_windows: torch.Tensor  # int64 [num_users, seq_len]
    val_targets: torch.Tensor  # int64 [num_users]: the held-out last item

    @property
    def num_train(self) -> int:
        return int(self.train_targets.numel())

    def batch(self, sample_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_windows[sample_ids], self.train_targets[sample_ids]


def synthetic_sequences(cfg: RecsysConfig) -> Sequences:
    # Its own generator: building the data never moves the global RNG streams.
    g = torch.Generator().manual_seed(cfg.seed)
    per_cluster = cfg.num_items // cfg.num_clusters
    history = torch.empty(cfg.num_users, cfg.history_len, dtype=torch.int64)
    for user in range(cfg.num_users):
        cluster = int(torch.randint(cfg.num_clusters, (1,), generator=g))
        item = cluster * per_cluster + int(torch.randint(per_cluster, (1,), generator=g))
        for t in range(cfg.history_len):
            history[user, t] = item
            if float(torch.rand(1, generator=g)) < _FOLLOW:
                item = cluster * per_cluster + (item - cluster * per_cluster + 1) % per_cluster
            else:
                item = int(torch.randint(cfg.num_items, (1,), generator=g))
    train = history[:, :-1].unfold(1, cfg.seq_len + 1, 1).reshape(-1, cfg.seq_len + 1)
    return Sequences(
        train_windows=train[:, :-1].contiguous(), train_targets=train[:, -1].contiguous(),
        val_windows=history[:, -cfg.seq_len - 1:-1].contiguous(), val_targets=history[:, -1].clone(),
    )
