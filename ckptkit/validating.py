"""The `validate` verb: a checkpoint's own checks plus what its run directory says about it.

`ckptkit.validation` checks a checkpoint alone; `ckptkit.runs` knows the traps of a run (a
stale "last", a best model behind the latest, temporaries). This module composes the two, so
that validation never imports the runs layer above it, and reads each file once: the
checkpoint is opened once, validated once, and that same reading is its entry in the run
(siblings are read only when a trap compares it with them; see `runs.run_findings_for`).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ckptkit.formats import open_checkpoint
from ckptkit.runs import run_findings_for
from ckptkit.validation import ValidationReport, validate_checkpoint


def validate_path(path: str | os.PathLike[str], *, deep: bool = False,
                  against: str | os.PathLike[str] | None = None, siblings: bool = True,
                  progress_callback: Callable[[int, int], None] | None = None) -> ValidationReport:
    """Open `path` (and `against`) and validate it; with `siblings`, add the run-level findings
    about it (`validate --no-run` turns them off: then no other file is opened).
    Raises CkptkitError when the input is unusable."""
    reference = open_checkpoint(Path(against)) if against is not None else None
    ckpt = open_checkpoint(Path(path))
    report = validate_checkpoint(ckpt, deep=deep, reference=reference, progress_callback=progress_callback)
    if siblings:
        report.add_group("run", run_findings_for(ckpt.path, ckpt, report))
    return report
