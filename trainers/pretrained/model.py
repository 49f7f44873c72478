"""A tiny text classifier: token and position embeddings, mean-pooled, an MLP head."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers.pretrained.config import ClassifierConfig


class TinyTextClassifier(nn.Module):
    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.positions = nn.Embedding(cfg.seq_len, cfg.hidden_size)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [batch, num_labels]."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        hidden = (self.embeddings(tokens) + self.positions(positions)).mean(dim=1)
        return self.classifier(self.dropout(F.gelu(self.dense(hidden))))


def f1_and_accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """The positive class's F1 (0 when nothing is predicted or present) and accuracy."""
    tp = int(((predicted == 1) & (labels == 1)).sum())
    fp = int(((predicted == 1) & (labels != 1)).sum())
    fn = int(((predicted != 1) & (labels == 1)).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return f1, float((predicted == labels).float().mean())
