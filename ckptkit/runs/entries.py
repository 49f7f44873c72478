"""A run's checkpoints as ckptkit lists them: each entry's health, markers and progress, the run
as a whole, and the file names that say what a checkpoint claims to be (best, last, final)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Finding, Progress
from ckptkit.storage.atomic import TEMP_MARKER

__all__ = ["BEST_NAME", "FINAL_NAME", "HF_CHECKPOINT", "HF_TEMP", "RECENT_NAME", "TEMP_MARKER", "Health", "Run",
           "RunEntry", "run_folder"]

HF_CHECKPOINT = re.compile(r"checkpoint-\d+$")
HF_TEMP = re.compile(r"tmp-checkpoint-\d+$")
# Names that promise "the newest": EnStack's last_checkpoint, LlamaRec's checkpoint-recent, last.ckpt.
RECENT_NAME = re.compile(r"(^|[-_.])(last|latest|recent|newest)([-_.]|$)", re.IGNORECASE)
BEST_NAME = re.compile(r"best", re.IGNORECASE)
FINAL_NAME = re.compile(r"final", re.IGNORECASE)


@dataclass
class Health:
    status: str                      # "ok" | "warnings" | "broken"
    reason: str | None = None        # the first problem, in one line
    errors: int = 0
    warnings: int = 0
    codes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "errors": self.errors,
                "warnings": self.warnings, "codes": self.codes}


@dataclass
class RunEntry:
    """One checkpoint (or would-be checkpoint) found below the run directory."""

    path: Path                       # as found below the root given (relative to cwd if the root was)
    relative: str                    # path relative to the run directory
    is_folder: bool
    format: str | None
    family: str | None
    progress: Progress
    size_bytes: int
    health: Health
    temporary: bool = False
    markers: list[str] = field(default_factory=list)
    best_reference: str | None = None   # HF trainer_state.json best_model_checkpoint, if any
    backup: bool = False                # kept by a repair (<name>.bak): shown, never resumed

    def to_json(self) -> dict[str, Any]:
        return {"path": self.relative, "format": self.format, "family": self.family,
                "progress": self.progress.to_json(), "size_bytes": self.size_bytes,
                "health": self.health.to_json(), "markers": list(self.markers), "temporary": self.temporary,
                "backup": self.backup}


def refused(entry: RunEntry) -> bool:
    """Its training system's resume raises on it (a Lightning weights-only .ckpt): a whole
    checkpoint, and none to resume from."""
    return entry.progress.resume is not None and entry.progress.resume.refuses is not None


@dataclass
class Run:
    root: Path
    entries: list[RunEntry]                      # ordered by training progress, least advanced first
    findings: list[Finding] = field(default_factory=list)
    subjects: list[list[Path]] = field(default_factory=list)   # per finding: the checkpoints it is about
    resume: RunEntry | None = None               # what `ckptkit latest` prints (None when several runs)

    def groups(self) -> dict[Path, list[RunEntry]]:
        """The runs below the root, by the folder their checkpoints are saved in (each training
        system saves one run's checkpoints into one folder), each ordered by progress."""
        out: dict[Path, list[RunEntry]] = {}
        for entry in self.entries:
            out.setdefault(run_folder(entry), []).append(entry)
        return out

    def runs(self) -> list[Path]:
        """The folders holding a run: at least one checkpoint with known progress that is not a
        temporary or backup copy. More than one: `latest` must be told which."""
        return [folder for folder, entries in self.groups().items()
                if any(e.progress.known and not e.temporary and not e.backup for e in entries)]

    def counted(self) -> str:
        """Why nothing qualifies to resume, in counts: "3 found, 0 broken, 3 that Lightning does
        not resume from"."""
        broken = sum(e.health.status == "broken" for e in self.entries)
        refusing = [e.progress.resume.system for e in self.entries if refused(e) and e.progress.resume]
        but = f", {len(refusing)} that {refusing[0]} does not resume from" if refusing else ""
        return f"{len(self.entries)} found, {broken} broken{but}"

    def to_json(self) -> dict[str, Any]:
        return {"root": str(self.root), "checkpoints": [e.to_json() for e in self.entries],
                "resume": self.resume.relative if self.resume else None,
                "runs": [self._relative(f) for f in self.runs()],
                "findings": [f.to_json() for f in self.findings]}

    def _relative(self, folder: Path) -> str:
        if folder == self.root:
            return "."
        return str(folder.relative_to(self.root)) if self.root in folder.parents else str(folder)


def run_folder(entry: RunEntry) -> Path:
    """The folder of the run a checkpoint belongs to: the folder it was saved into."""
    return entry.path.parent if entry.relative != "." else entry.path
