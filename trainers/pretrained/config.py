"""Classifier trainer configurations: seed 003's shape (a binary text classifier) plus ``tiny``.

Stored in every checkpoint's ``training_state.pth`` as a plain dict (``weights_only`` loads it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class ClassifierConfig:
    name: str
    vocab_size: int
    seq_len: int
    num_train: int
    num_val: int
    hidden_size: int
    batch_size: int
    num_labels: int = 2  # seed 003: vulnerable or not; F1 is the positive class's
    dropout: float = 0.1
    grad_accum: int = 1
    learning_rate: float = 2e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 10
    lr_decay: float = 0.995  # per optimizer step after warmup: an extended run keeps its schedule
    save_steps: int = 500  # seed 003's default: a mid-epoch last_checkpoint every 500 batches
    epochs: int = 10
    seed: int = 42
    precision: str = "auto"  # auto | fp32 | bf16 | fp16; resolved at start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, **overrides: Any) -> ClassifierConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def model_config(self) -> dict[str, Any]:
        """config.json, as ``save_pretrained`` would write it for this model."""
        labels = {i: ("vulnerable" if i == 1 else "safe") if self.num_labels == 2 else f"LABEL_{i}"
                  for i in range(self.num_labels)}
        return {
            "architectures": ["TinyTextClassifier"], "model_type": "ckptkit-tiny-classifier",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size, "max_position_embeddings": self.seq_len,
            "num_labels": self.num_labels, "hidden_dropout_prob": self.dropout, "torch_dtype": "float32",
            "id2label": {str(i): name for i, name in labels.items()},
            "label2id": {name: i for i, name in labels.items()},
        }


PRESETS: dict[str, ClassifierConfig] = {
    # Well under a second on a CPU: 12 batches per epoch, a mid-epoch save at batch 5 and 10, 3 epochs.
    "tiny": ClassifierConfig(name="tiny", vocab_size=64, seq_len=16, num_train=192, num_val=64, hidden_size=16,
                             batch_size=16, warmup_steps=4, lr_decay=0.98, save_steps=5, epochs=3, learning_rate=1e-2),
    # Seed 003's scale: 1270 batches per epoch of 16, save every 500, 10 epochs.
    "default": ClassifierConfig(name="default", vocab_size=4096, seq_len=128, num_train=20320, num_val=2048,
                                hidden_size=128, batch_size=16),
}
DEFAULT_PRESET = "default"
