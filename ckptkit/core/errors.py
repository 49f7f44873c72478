"""The one exception hierarchy of ckptkit.

Findings (something is wrong *inside* a checkpoint that could still be read) are values, not
exceptions: see `ckptkit.core.checkpoint.Finding`. Exceptions are for input that cannot be used at
all, or an operation that could not be carried out. The CLI turns every `CkptkitError` into one
line, ``<path>: <message>``, and exit code 2.
"""
from __future__ import annotations

from pathlib import Path


class CkptkitError(Exception):
    """Unusable input or a failed operation, always about one file or folder."""

    exit_code = 2

    def __init__(self, path: str | Path | None, message: str) -> None:
        self.path = Path(path) if path is not None else None
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path is not None else self.message
        # One line, always: messages may quote bytes from a damaged file.
        return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class NotACheckpointError(CkptkitError):
    """The path exists but holds no checkpoint format ckptkit knows (text, foreign archive, empty)."""


class MissingFileError(CkptkitError):
    """The path, or a file a checkpoint needs (shard, index member), does not exist."""


class CorruptCheckpointError(CkptkitError):
    """A known format whose bytes are damaged: truncated, flipped, inconsistent offsets."""


class UnsupportedFeatureError(CkptkitError):
    """A known format using a feature ckptkit cannot handle yet (named in the message)."""


class WriteVerificationError(CkptkitError):
    """A write was read back and did not match what was meant to be written; nothing was replaced."""


class ResumeRefusedError(CkptkitError):
    """Validation found errors in the checkpoint a run was asked to resume from."""
