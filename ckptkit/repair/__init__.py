"""Repairs: `fix_epoch` (set recorded progress) and `repair` (safe fixes named by finding code).

Every write is atomic and verified (`ckptkit.repair.rewrite`, `ckptkit.storage.atomic`): a temporary
file beside the target, fsynced, read back and compared, the original kept as a backup, then
renamed into place. Library functions return `RepairResult` and never print.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ckptkit.core.errors import CkptkitError
from ckptkit.core.paths import named
from ckptkit.formats import open_checkpoint
from ckptkit.repair.changes import Change, RepairPlan, RepairResult, apply_changes
from ckptkit.repair.epoch import carry_out, fix_epoch, training_state_member
from ckptkit.repair.fixes import ALL_CODES, FIXES, FOLDER_FIXES
from ckptkit.repair.hf_trainer import plan_step_resync, write_plan
from ckptkit.repair.rewrite import check_rewritable, check_writable_tree, rewrite_note

__all__ = ["ALL_CODES", "Change", "RepairPlan", "RepairResult", "fix_epoch", "repair"]


def repair_checkpoint(path: str | os.PathLike[str], fixes: list[str] | None = None, *, dry_run: bool = False,
           backup: str | os.PathLike[str] | None = None, keep_backup: bool = True) -> RepairResult:
    """Apply the fixes named by `fixes` (finding codes); with None, plan every applicable fix and
    write nothing. Raises CkptkitError for an unknown code or unusable input (nothing modified)."""
    path = named(path)       # "." inside a checkpoint folder: by its name
    unknown = [c for c in fixes or [] if c not in ALL_CODES]
    if unknown:
        raise CkptkitError(path, f"no automatic fix for {', '.join(unknown)}; known: {', '.join(ALL_CODES)}")
    listing = fixes is None
    if path.is_dir() and (path / "trainer_state.json").is_file():
        return _repair_hf_folder(path, fixes, dry_run=dry_run or listing, backup=backup, keep_backup=keep_backup)
    if path.is_dir():
        path = training_state_member(path) or path
    ckpt = open_checkpoint(path)
    codes = list(FIXES) if listing else [c for c in fixes or [] if c in FIXES]
    plan = RepairPlan(str(path), ckpt.format, ckpt.family, "repair " + " ".join(codes),
                      progress_before=ckpt.progress.describe())
    for code in codes:
        fixed = FIXES[code].plan(ckpt)
        if fixed.changes:
            plan.fixes.append(code)
            apply_changes(ckpt.tree, fixed.changes)
        plan.changes += fixed.changes
        plan.cannot_fix += fixed.cannot_fix
        plan.notes += fixed.notes
    applied = plan.fixes if listing else codes
    plan.action = "repair " + " ".join(f"--fix {c}" for c in applied) if applied else "repair (no fix applies)"
    for code in fixes or []:
        if code in FOLDER_FIXES:
            plan.notes.append(f"{code} applies to Hugging Face Trainer checkpoint-N folders only; not to this file")
    if plan.changes:
        check_rewritable(ckpt)
        check_writable_tree(ckpt)
        plan.files = [str(path)]
        plan.notes += [n for n in [rewrite_note(ckpt)] if n]
    return carry_out(ckpt, plan, dry_run=dry_run or listing, backup=backup, keep_backup=keep_backup)


def _repair_hf_folder(folder: Path, fixes: list[str] | None, *, dry_run: bool, backup: Any,
                      keep_backup: bool) -> RepairResult:

    wanted = fixes if fixes is not None else list(FOLDER_FIXES)
    plan = plan_step_resync(folder) if "counters.hf-step-mismatch" in wanted else RepairPlan(
        str(folder), "hf-trainer", "hf-trainer", "repair")
    plan.notes += [f"{code} applies to single checkpoint files; not to a Trainer folder" for code in wanted
                   if code in FIXES]
    if dry_run or plan.nothing_to_do:
        return RepairResult(plan, dry_run=dry_run)
    return write_plan(folder, plan, backup=backup, keep_backup=keep_backup)
