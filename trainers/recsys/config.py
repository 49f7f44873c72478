"""Recsys trainer configurations: seed 000's spirit (``--lr``, ``--num_epochs``) plus ``tiny``
for tests and the demo.

Stored in every checkpoint as a plain dict, so checkpoints load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class RecsysConfig:
    name: str
    num_users: int
    num_items: int
    num_clusters: int  # items belong to taste clusters; users walk mostly inside one: the structure to learn
    history_len: int  # interactions per user; the last one is held out for validation
    seq_len: int  # items of history the model reads to predict the next one
    embed_dim: int
    batch_size: int
    dropout: float = 0.1
    grad_accum: int = 1
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    lr_decay: float = 0.999  # per optimizer step after warmup; independent of the epoch budget
    epochs: int = 50
    seed: int = 42
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; resolved at start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecsysConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, **overrides: Any) -> RecsysConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


PRESETS: dict[str, RecsysConfig] = {
    # Under a second on a laptop CPU: 40 users x 4 windows = 160 samples, 10 batches per epoch
    # (5 optimizer steps), 4 epochs.
    "tiny": RecsysConfig(
        name="tiny", num_users=40, num_items=30, num_clusters=3, history_len=9, seq_len=4, embed_dim=16,
        batch_size=16, grad_accum=2, learning_rate=1e-2, warmup_steps=3, lr_decay=0.98, epochs=4,
    ),
    # Roughly ml-100k's size (943 users, 1682 items), synthetic.
    "default": RecsysConfig(
        name="default", num_users=943, num_items=1682, num_clusters=19, history_len=41, seq_len=20,
        embed_dim=64, batch_size=128,
    ),
}
DEFAULT_PRESET = "default"
