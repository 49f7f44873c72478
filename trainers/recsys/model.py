"""A small LRU-style sequential recommender (seed 000 trains an LRU retriever): item embeddings
through a diagonal linear recurrence, scored against every item (tied embeddings)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers.recsys.config import RecsysConfig


class LinearRecurrence(nn.Module):
    """h_t = lambda * h_{t-1} + W x_t, with a learned per-channel decay lambda in (0, 1)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.decay_logit = nn.Parameter(torch.zeros(dim))
        self.input = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        decay = torch.sigmoid(self.decay_logit)
        inputs = self.input(x)
        h = torch.zeros_like(inputs[:, 0])
        for t in range(inputs.shape[1]):
            h = decay * h + inputs[:, t]
        return h


class SequentialRecommender(nn.Module):
    def __init__(self, cfg: RecsysConfig) -> None:
        super().__init__()
        self.items = nn.Embedding(cfg.num_items, cfg.embed_dim)
        # scores are dot products with a unit-variance state: unit-norm item vectors start them near 0
        nn.init.normal_(self.items.weight, std=cfg.embed_dim ** -0.5)
        self.recurrence = LinearRecurrence(cfg.embed_dim)
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def logits(self, windows: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.recurrence(self.dropout(self.items(windows))))
        return (h @ self.items.weight.T).float()

    def forward(self, windows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Next-item cross-entropy over all items."""
        return F.cross_entropy(self.logits(windows), targets)

    @torch.no_grad()
    def accuracy(self, windows: torch.Tensor, targets: torch.Tensor) -> float:
        """Share of users whose held-out next item is the top-scored one."""
        return float((self.logits(windows).argmax(dim=-1) == targets).float().mean().item())
