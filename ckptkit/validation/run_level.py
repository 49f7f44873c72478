"""Run-level findings: this checkpoint against the other checkpoints of its run.

The logic (best_model.pt while a later checkpoint exists, a `last_checkpoint` older than a
sibling, leftover temporary folders) lives in `ckptkit.runs`, shared with `ckptkit ls`; this
check only passes its findings on, and only when the caller allows looking at siblings.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ckptkit.core.checkpoint import Finding

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext


def check_run(ctx: ValidationContext) -> Iterable[Finding]:
    if not ctx.siblings:
        return
    try:
        from ckptkit.runs import run_findings_for
    except ImportError:        # the run view is not part of this build
        return
    yield from run_findings_for(ctx.ckpt.path)
