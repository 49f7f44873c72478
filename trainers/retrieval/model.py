"""A two-tower retrieval model: user and item embeddings, each through an MLP, cosine scores."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers.retrieval.config import RetrievalConfig


class Tower(nn.Module):
    def __init__(self, count: int, cfg: RetrievalConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(count, cfg.embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.embed_dim, cfg.hidden_dim), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden_dim, cfg.embed_dim),
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embedding(ids)
        return F.normalize((e + self.mlp(e)).float(), dim=-1)


class TwoTower(nn.Module):
    def __init__(self, cfg: RetrievalConfig) -> None:
        super().__init__()
        self.user_tower = Tower(cfg.num_users, cfg)
        self.item_tower = Tower(cfg.num_items, cfg)
        self.temperature = cfg.temperature

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """In-batch softmax loss: each user's positive against the batch's other items."""
        logits = self.user_tower(users) @ self.item_tower(items).T / self.temperature
        return F.cross_entropy(logits, torch.arange(len(users), device=logits.device))

    @torch.no_grad()
    def recall_at(self, users: torch.Tensor, items: torch.Tensor, k: int = 10) -> float:
        """Share of users whose held-out item is among the k best-scored of all items."""
        all_items = self.item_tower(torch.arange(self.item_tower.embedding.num_embeddings, device=users.device))
        scores = self.user_tower(users) @ all_items.T
        top = scores.topk(k, dim=-1).indices
        return float((top == items[:, None]).any(dim=-1).float().mean().item())
