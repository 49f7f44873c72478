"""ckptkit: checkpoint forensics and repair for PyTorch training runs.

The public API, by question::

    open_checkpoint(path)            -> Checkpoint      what is in it (index only, lazy)
    inspect_checkpoint(path)         -> Inspection      the same, summarized for people
    validate_path(path, deep=...)    -> ValidationReport  is it whole, consistent, safe?
    scan_run(run_dir)                -> Run             a run's checkpoints, ordered by progress
    diff_paths(a, b)                 -> CheckpointDiff  what changed
    fix_epoch(path, ...) / repair_checkpoint(path, ...) -> RepairResult   record progress, apply safe fixes
    convert_checkpoint(src, dst, ConvertOptions(...)) -> ConversionResult

Errors are :class:`CkptkitError` and its subclasses; each carries the CLI's exit code.
Names load on first use, so ``import ckptkit`` stays cheap (no torch) for ``inspect`` and ``ls``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Formats decode bytes; families interpret the trees they decode, registered on import. Imported
# here so that every entry point (library, CLI, trainers) reads checkpoints with them registered.
import ckptkit.families  # noqa: F401,I001  (after __version__: the families import ckptkit's layers)
from ckptkit.core.version import VERSION as __version__

# name -> module that defines it; imported on first attribute access (PEP 562).
_API = {
    "Checkpoint": "ckptkit.core.checkpoint",
    "TensorRef": "ckptkit.core.checkpoint",
    "Progress": "ckptkit.core.checkpoint",
    "Finding": "ckptkit.core.checkpoint",
    "Severity": "ckptkit.core.checkpoint",
    "CkptkitError": "ckptkit.core.errors",
    "CorruptCheckpointError": "ckptkit.core.errors",
    "MissingFileError": "ckptkit.core.errors",
    "NotACheckpointError": "ckptkit.core.errors",
    "UnsupportedFeatureError": "ckptkit.core.errors",
    "ResumeRefusedError": "ckptkit.core.errors",
    "open_checkpoint": "ckptkit.formats",
    "detect_format": "ckptkit.formats",
    "inspect_checkpoint": "ckptkit.inspection",
    "Inspection": "ckptkit.inspection",
    "validate_path": "ckptkit.validation",
    "validate_checkpoint": "ckptkit.validation",
    "ValidationReport": "ckptkit.validation",
    "scan_run": "ckptkit.runs",
    "Run": "ckptkit.runs",
    "RunEntry": "ckptkit.runs",
    "diff_paths": "ckptkit.diffing",
    "diff_checkpoints": "ckptkit.diffing",
    "DiffOptions": "ckptkit.diffing.report",
    "CheckpointDiff": "ckptkit.diffing.report",
    "fix_epoch": "ckptkit.repair",
    "repair_checkpoint": "ckptkit.repair",
    "RepairResult": "ckptkit.repair",
    "convert_checkpoint": "ckptkit.conversion",
    "ConvertOptions": "ckptkit.conversion",
    "ConversionResult": "ckptkit.conversion",
}

__all__ = [
    "__version__",
    "Checkpoint",
    "TensorRef",
    "Progress",
    "Finding",
    "Severity",
    "CkptkitError",
    "CorruptCheckpointError",
    "MissingFileError",
    "NotACheckpointError",
    "UnsupportedFeatureError",
    "ResumeRefusedError",
    "open_checkpoint",
    "detect_format",
    "inspect_checkpoint",
    "Inspection",
    "validate_path",
    "validate_checkpoint",
    "ValidationReport",
    "scan_run",
    "Run",
    "RunEntry",
    "diff_paths",
    "diff_checkpoints",
    "DiffOptions",
    "CheckpointDiff",
    "fix_epoch",
    "repair_checkpoint",
    "RepairResult",
    "convert_checkpoint",
    "ConvertOptions",
    "ConversionResult",
]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'ckptkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # the same names, for type checkers and editors
    from ckptkit.conversion import ConversionResult, ConvertOptions, convert_checkpoint
    from ckptkit.core.checkpoint import Checkpoint, Finding, Progress, Severity, TensorRef
    from ckptkit.core.errors import (
        CkptkitError,
        CorruptCheckpointError,
        MissingFileError,
        NotACheckpointError,
        ResumeRefusedError,
        UnsupportedFeatureError,
    )
    from ckptkit.diffing import diff_checkpoints, diff_paths
    from ckptkit.diffing.report import CheckpointDiff, DiffOptions
    from ckptkit.formats import detect_format, open_checkpoint
    from ckptkit.inspection import Inspection, inspect_checkpoint
    from ckptkit.repair import RepairResult, fix_epoch, repair_checkpoint
    from ckptkit.runs import Run, RunEntry, scan_run
    from ckptkit.validation import ValidationReport, validate_checkpoint, validate_path
