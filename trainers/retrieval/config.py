"""Retrieval trainer configurations: seed 001's defaults plus ``tiny`` for tests and the demo.

Stored in every checkpoint as a plain dict, so checkpoints load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class RetrievalConfig:
    name: str
    num_users: int
    num_items: int
    interactions_per_user: int  # positives per user; one more per user is held out for validation
    num_clusters: int  # users and items share latent taste clusters: the structure to learn
    embed_dim: int
    hidden_dim: int
    batch_size: int
    dropout: float = 0.1
    temperature: float = 0.1
    grad_accum: int = 2  # seed 001's default
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    lr_decay: float = 0.999  # per optimizer step after warmup; independent of the epoch budget
    epochs: int = 100
    seed: int = 42
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (seed 001's --mixed-precision); resolved at start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrievalConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, **overrides: Any) -> RetrievalConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


PRESETS: dict[str, RetrievalConfig] = {
    # A second on a laptop CPU: 12 batches per epoch (6 optimizer steps), 4 epochs.
    "tiny": RetrievalConfig(
        name="tiny", num_users=48, num_items=96, interactions_per_user=8, num_clusters=6, embed_dim=16,
        hidden_dim=32, batch_size=32, learning_rate=1e-2, warmup_steps=4, lr_decay=0.98, epochs=4,
    ),
    # Seed 001's command line defaults: --batch 64, --epochs 100, --gradient-accumulation 2.
    "default": RetrievalConfig(
        name="default", num_users=4000, num_items=8000, interactions_per_user=16, num_clusters=64,
        embed_dim=64, hidden_dim=256, batch_size=64,
    ),
}
DEFAULT_PRESET = "default"
