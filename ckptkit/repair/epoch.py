"""`fix-epoch`: record how far training got, in the checkpoint family's own convention.

`epoch` is human numbering: `epoch=2, complete=True` means two whole epochs are done;
`epoch=2, step=S` means the second epoch is in progress with S batches of it trained. The stored
values come from the family's `record` function, the inverse of the `progress` function that
reads them (`ckptkit.families`), and the plan is checked by reading it back through `progress`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Checkpoint, Progress
from ckptkit.core.errors import CkptkitError, UnsupportedFeatureError
from ckptkit.core.paths import named
from ckptkit.families import UnrepresentableProgress, family_named, optimizer_step, recognise
from ckptkit.formats import open_checkpoint
from ckptkit.formats.dcp import CKPTKIT_TRAINING_STATE
from ckptkit.repair.changes import RepairPlan, RepairResult, apply_changes, plan_sets
from ckptkit.repair.hf_trainer import TRAINER_STATE, fix_epoch_hf
from ckptkit.repair.position import describe_action, target_position
from ckptkit.repair.rewrite import check_rewritable, check_writable_tree, rewrite_file, rewrite_note
from ckptkit.storage.atomic import default_backup_path
from ckptkit.views import sections as S


def training_state_member(folder: Path) -> Path | None:
    """The one torch.save file that holds a checkpoint folder's progress, if it has one: seed
    003's `training_state.pth` beside a save_pretrained model, or the training state beside the
    shards of ckptkit's sharded (DCP) checkpoints. Repairs of the folder rewrite that file."""

    for name in ("training_state.pth", CKPTKIT_TRAINING_STATE):
        if (folder / name).is_file():
            return folder / name
    return None


def fix_epoch(path: str | os.PathLike[str], epoch: int, *, step: int | None = None, dry_run: bool = False,
              backup: str | os.PathLike[str] | None = None, keep_backup: bool = True) -> RepairResult:
    """Set the recorded progress of the checkpoint at `path`; see the module docstring.

    Writes nothing when the checkpoint already says so (running twice == running once) or when
    `dry_run`. Raises CkptkitError (nothing modified) when the family cannot record it.
    """
    path = named(path)       # "." inside a checkpoint folder: by its name
    try:
        epochs, within = target_position(epoch, step)
    except ValueError as exc:
        raise CkptkitError(path, str(exc)) from None
    if path.is_dir():
        if (path / TRAINER_STATE).is_file():
            return fix_epoch_hf(path, epoch, step, dry_run=dry_run, backup=backup, keep_backup=keep_backup)
        path = training_state_member(path) or path
    ckpt = open_checkpoint(path)
    plan = plan_fix_epoch(ckpt, epochs, within, describe_action(epoch, step))
    return carry_out(ckpt, plan, dry_run=dry_run, backup=backup, keep_backup=keep_backup)


def plan_fix_epoch(ckpt: Checkpoint, epochs: int, within: int, action: str) -> RepairPlan:
    """The changes (applied to `ckpt.tree` in memory) that make the checkpoint say `epochs`, `within`."""
    check_rewritable(ckpt)
    family = family_named(ckpt.family)
    if family is None or family.record is None:
        raise UnsupportedFeatureError(ckpt.path, f"a {ckpt.family} checkpoint has no epoch counter ckptkit "
                                      "knows how to set (nanoGPT-style dicts count iterations only)")
    try:
        values = family.record(ckpt.tree, epochs, within)
    except UnrepresentableProgress as exc:
        raise UnsupportedFeatureError(ckpt.path, f"{ckpt.family} layout: {exc}") from None
    plan = RepairPlan(str(ckpt.path), ckpt.format, ckpt.family, action,
                      progress_before=ckpt.progress.describe())
    plan.changes = plan_sets(ckpt.path.name, ckpt.tree, values)
    apply_changes(ckpt.tree, plan.changes)
    after = _read_back(ckpt, family.name, epochs, within)
    plan.progress_after = after.describe()
    if plan.changes:
        check_writable_tree(ckpt)
        plan.files = [str(ckpt.path)]
        plan.cannot_fix = left_inconsistent(ckpt, epochs, within)
        plan.notes = [n for n in [rewrite_note(ckpt)] if n]
    return plan


def _read_back(ckpt: Checkpoint, family: str, epochs: int, within: int) -> Progress:
    """Reading and writing must agree: the family's reader sees exactly what was asked."""
    found = recognise(ckpt.tree)
    fam = family_named(family)
    after = fam.progress(ckpt.tree, ckpt.path) if fam else Progress()
    if found is None or found.name != family or (after.epochs_completed, after.step_in_epoch or 0) != (epochs, within):
        between = fam.names.between if fam else None
        if between is not None and between.match(ckpt.path.name):
            raise UnsupportedFeatureError(
                ckpt.path, f"{fam.system if fam else family} layout: the name {ckpt.path.name} records where inside "
                f"its epoch this save was made, so the file would still read as '{after.describe()}'; ckptkit "
                "never renames: copy it under another name and fix the copy")
        raise CkptkitError(ckpt.path, f"internal error: the {family} counters written would read back as "
                           f"'{after.describe()}'; nothing was written")
    return after


def left_inconsistent(ckpt: Checkpoint, epochs: int, within: int) -> list[str]:
    """Counters ckptkit did not change because it cannot derive them, with how to proceed."""
    out: list[str] = []
    sched = ckpt.scheduler
    last = S.as_int(sched.get("last_epoch")) if isinstance(sched, dict) else None
    if last is not None:
        out.append(f"scheduler {ckpt.sources.get('scheduler', 'scheduler')}.last_epoch = {last} was left as is: "
                   "it counts scheduler steps, which an epoch number does not determine. If the schedule "
                   f"steps once per epoch it should be {epochs}; otherwise re-create the scheduler at resume "
                   "and step it to the right position")
    opt_step = optimizer_step(ckpt.optimizer)
    if opt_step is not None:
        out.append(f"optimizer step count = {opt_step} was left as is (Adam's bias correction uses it); "
                   "it only matters if you also rewind the weights")
    family = family_named(ckpt.family)
    if family is not None and family.left_as_is is not None and isinstance(ckpt.tree, dict):
        out += family.left_as_is(ckpt.tree)
    m = family.name_pattern.search(ckpt.path.name) if family and family.name_pattern else None
    if m and int(m.group("epoch")) != epochs:
        out.append(f"the file name says epoch {m.group('epoch')} but the file now records {epochs} epochs: "
                   f"rename it yourself (ckptkit never renames), e.g. mv '{ckpt.path.name}' "
                   f"'{ckpt.path.name.replace(m.group(0), f'epoch_{epochs}_recall_' + m.group('recall'))}'")
    for key, history in ckpt.histories.items():
        if family and family.epoch_histories and len(history) != epochs:
            out.append(f"history '{key}' has {len(history)} entries for {epochs} recorded epochs; it was left as is")
    return out


def carry_out(ckpt: Checkpoint, plan: RepairPlan, *, dry_run: bool, backup: Any, keep_backup: bool) -> RepairResult:
    """Write a planned (already applied in memory) single-file repair, unless there is nothing to do."""
    result = RepairResult(plan, dry_run=dry_run)
    if plan.nothing_to_do or dry_run:
        return result
    where = Path(backup) if backup is not None else default_backup_path(ckpt.path) if keep_backup else None
    rewrite_file(ckpt, where)
    result.written = True
    result.backups = [str(where)] if where is not None else []
    return result
