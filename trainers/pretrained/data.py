"""Built-in synthetic token sequences for binary classification, deterministic from a seed.

A positive ("vulnerable") sequence carries a few tokens from a small marker set; a negative one
does not. Nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trainers.pretrained.config import ClassifierConfig

_MARKERS = 4  # tokens 1..4 mark the positive class; 0 is never used (padding in a real tokenizer)
_MARKED = 0.25  # share of a positive sequence's positions that carry a marker


@dataclass(frozen=True)
class Sequences:
    train_tokens: torch.Tensor  # int64 [num_train, seq_len]
    train_labels: torch.Tensor  # int64 [num_train]
    val_tokens: torch.Tensor
    val_labels: torch.Tensor

    @property
    def num_train(self) -> int:
        return int(self.train_labels.numel())


def synthetic_sequences(cfg: ClassifierConfig) -> Sequences:
    # Its own generator: building the data never moves the global RNG streams.
    g = torch.Generator().manual_seed(cfg.seed)
    total = cfg.num_train + cfg.num_val
    labels = torch.randint(2, (total,), generator=g)
    tokens = torch.randint(_MARKERS + 1, cfg.vocab_size, (total, cfg.seq_len), generator=g)
    markers = torch.randint(1, _MARKERS + 1, (total, cfg.seq_len), generator=g)
    marked = (torch.rand(total, cfg.seq_len, generator=g) < _MARKED) & labels.bool()[:, None]
    tokens = torch.where(marked, markers, tokens)
    n = cfg.num_train
    return Sequences(tokens[:n].clone(), labels[:n].clone(), tokens[n:].clone(), labels[n:].clone())
