"""Built-in synthetic user-item interactions, deterministic from a seed; nothing downloaded.

Users and items each belong to one of ``num_clusters`` taste clusters; a user interacts mostly
with items of their own cluster. Every user has ``interactions_per_user`` training positives and
one held-out positive for validation (Recall@10: is it among the 10 best-scored items?).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainers.retrieval.config import RetrievalConfig

_IN_CLUSTER = 0.9  # share of a user's interactions inside their own cluster


@dataclass(frozen=True)
class Interactions:
    train_users: torch.Tensor  # int64 [N]: pair i is (train_users[i], train_items[i])
    train_items: torch.Tensor
    val_users: torch.Tensor  # int64 [num_users]: one held-out item per user
    val_items: torch.Tensor

    @property
    def num_train(self) -> int:
        return int(self.train_users.numel())

    def batch(self, sample_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_users[sample_ids], self.train_items[sample_ids]


def synthetic_interactions(cfg: RetrievalConfig) -> Interactions:
    # Its own generator: building the data never moves the global RNG streams.
    g = torch.Generator().manual_seed(cfg.seed)
    user_cluster = torch.randint(cfg.num_clusters, (cfg.num_users,), generator=g)
    item_cluster = torch.arange(cfg.num_items) % cfg.num_clusters
    per_user = cfg.interactions_per_user + 1
    users, items = [], []
    for user in range(cfg.num_users):
        own = (item_cluster == user_cluster[user]).nonzero().flatten()
        chosen = torch.where(
            torch.rand(per_user, generator=g) < _IN_CLUSTER,
            own[torch.randint(len(own), (per_user,), generator=g)],
            torch.randint(cfg.num_items, (per_user,), generator=g),
        )
        users.append(torch.full((per_user,), user))
        items.append(chosen)
    all_users, all_items = torch.stack(users), torch.stack(items)  # [num_users, per_user]
    return Interactions(
        train_users=all_users[:, :-1].reshape(-1), train_items=all_items[:, :-1].reshape(-1),
        val_users=all_users[:, -1].clone(), val_items=all_items[:, -1].clone(),
    )
