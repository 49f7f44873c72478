"""LM trainer configurations: seed 004's presets plus ``tiny`` for tests and the demo.

A config is a plain dataclass and is stored in every checkpoint as a plain dict
(``dataclasses.asdict``), so checkpoints load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# Flags that change what is trained: ignored on resume (the run's own values win).
TRAINING_FIELDS = (
    "name", "n_layer", "n_head", "n_embd", "block_size", "dropout", "batch_size", "grad_accum",
    "learning_rate", "weight_decay", "warmup_steps", "max_steps", "seed", "corpus_chars", "precision",
)
# Flags that only change when we save or evaluate: a resumed run may change them.
SCHEDULE_FIELDS = ("save_interval", "eval_interval", "log_interval")


@dataclass(frozen=True)
class LMConfig:
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    dropout: float = 0.1
    grad_accum: int = 1
    learning_rate: float = 3e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    max_steps: int = 2000
    save_interval: int = 500
    eval_interval: int = 250
    eval_batches: int = 8
    log_interval: int = 50
    seed: int = 1337
    corpus_chars: int = 1_000_000
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; resolved to a concrete value when a run starts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, **overrides: Any) -> LMConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def approx_params(self, vocab_size: int) -> int:
        return 12 * self.n_layer * self.n_embd**2 + (vocab_size + self.block_size) * self.n_embd


PRESETS: dict[str, LMConfig] = {
    # Seconds on a laptop CPU: 11 batches per epoch, so 40 steps cross three epoch boundaries.
    "tiny": LMConfig(
        name="tiny", n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, learning_rate=3e-3,
        warmup_steps=5, max_steps=40, save_interval=10, eval_interval=10, eval_batches=2,
        log_interval=10, corpus_chars=1600,
    ),
    # Sizes as in seed 004's guide (~2M, ~15M, ~60M, ~200M, ~100M parameters).
    "small": LMConfig(name="small", n_layer=4, n_head=4, n_embd=192, block_size=128, batch_size=2, learning_rate=1e-3),
    "medium": LMConfig(name="medium", n_layer=6, n_head=7, n_embd=448, block_size=256, batch_size=4, learning_rate=6e-4),
    "large": LMConfig(name="large", n_layer=12, n_head=10, n_embd=640, block_size=256, batch_size=8),
    "xlarge": LMConfig(
        name="xlarge", n_layer=16, n_head=16, n_embd=1024, block_size=512, batch_size=4, corpus_chars=4_000_000,
    ),
    "rtx4090": LMConfig(
        name="rtx4090", n_layer=12, n_head=13, n_embd=832, block_size=512, batch_size=32, corpus_chars=8_000_000,
    ),
}
DEFAULT_PRESET = "medium"  # seed 004's default
