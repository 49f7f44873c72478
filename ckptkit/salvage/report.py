"""What a salvage recovered, what it lost, and whether the result can resume a run."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RecoveredItem:
    name: str              # dotted key path in the checkpoint, or a folder member's name
    what: str              # "float32[4, 3]", "data.pkl (the tree and counters)", "file"
    nbytes: int
    checked: str           # how we know the bytes are the saved ones: "CRC-32", "JSON parses", "unchecked: ..."

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "what": self.what, "bytes": self.nbytes, "checked": self.checked}


@dataclass(frozen=True)
class LostItem:
    name: str              # dotted key path, record name, or member name; "(unnamed record N)" when unknown
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "reason": self.reason}


@dataclass
class Resumability:
    """Can a run resume from the salvaged checkpoint? Each part in words, then the verdict."""

    model: str = "not found"          # "whole" | "partial: 2 of 10 tensors lost" | "not found"
    optimizer: str = "not found"
    counters: str = "lost"            # "recovered: epoch 3 complete, ..." | "taken from OTHER ..." | "lost"
    resumable: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "counters": self.counters,
                "resumable": self.resumable}


@dataclass
class SalvageReport:
    source: Path
    output: Path | None               # None when nothing could be written
    format: str                       # "torch-zip" | "safetensors" | "folder"
    recovered: list[RecoveredItem] = field(default_factory=list)
    lost: list[LostItem] = field(default_factory=list)
    resume: Resumability = field(default_factory=Resumability)
    notes: list[str] = field(default_factory=list)
    members: list[SalvageReport] = field(default_factory=list)   # a folder: one report per member file

    @property
    def complete(self) -> bool:
        return not self.lost and all(m.complete for m in self.members)

    def all_lost(self) -> list[LostItem]:
        own = list(self.lost)
        for m in self.members:
            own.extend(LostItem(f"{m.source.name}: {item.name}", item.reason) for item in m.all_lost())
        return own

    def to_json(self) -> dict[str, Any]:
        return {"source": str(self.source), "output": str(self.output) if self.output else None,
                "format": self.format, "complete": self.complete,
                "recovered": [r.to_json() for r in self.recovered], "lost": [x.to_json() for x in self.lost],
                "resume": self.resume.to_json(), "notes": list(self.notes),
                "members": [m.to_json() for m in self.members]}
