"""Findings: one thing wrong (or worth knowing) about a checkpoint, with its severity and the
ckptkit command that fixes it. Validation returns them; every command renders them."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


@dataclass(frozen=True)
class Finding:
    """One thing wrong (or worth knowing) about a checkpoint, with the command that fixes it."""

    code: str                 # stable, e.g. "security.dangerous-global"
    severity: Severity
    where: str                # file and key, e.g. "best_model.pt: config"
    message: str              # expected vs found, in plain words
    fix: str | None = None    # the ckptkit command that fixes it, when there is one

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity.value, "where": self.where,
                "message": self.message, "fix": self.fix}
