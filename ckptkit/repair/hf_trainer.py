"""Repairs of a Hugging Face Trainer `checkpoint-{global_step}/` folder's `trainer_state.json`.

The Trainer resumes from `global_step` (epochs trained = global_step // optimizer steps per
epoch) and shows `epoch` as a float; the folder name repeats global_step. Only
`trainer_state.json` is rewritten (atomically, with a backup beside it); the binary members
(optimizer.pt, scheduler.pt, rng_state.pth) are never touched.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ckptkit.core.errors import CkptkitError, CorruptCheckpointError, UnsupportedFeatureError, WriteVerificationError
from ckptkit.repair.changes import RepairPlan, RepairResult, apply_changes, plan_sets
from ckptkit.repair.manifests import ManifestRefresh
from ckptkit.repair.position import describe_action, target_position
from ckptkit.storage.atomic import atomic_write_file, default_backup_path

TRAINER_STATE = "trainer_state.json"
FOLDER_STEP = re.compile(r"^checkpoint-(\d+)$")


def read_trainer_state(folder: Path) -> dict[str, Any]:
    path = folder / TRAINER_STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(path, f"cannot be read as JSON: {exc}") from None
    if not isinstance(state, dict):
        raise CorruptCheckpointError(path, "is not a JSON object")
    return state


def folder_step(folder: Path) -> int | None:
    m = FOLDER_STEP.match(folder.name)
    return int(m.group(1)) if m else None


def steps_per_epoch(folder: Path, state: dict[str, Any]) -> int:
    """Optimizer steps per epoch, from max_steps / num_train_epochs, else global_step / epoch."""
    max_steps, epochs = state.get("max_steps"), state.get("num_train_epochs")
    if isinstance(max_steps, int) and isinstance(epochs, int) and epochs > 0 and max_steps % epochs == 0 and max_steps:
        return max_steps // epochs
    step, epoch = state.get("global_step"), state.get("epoch")
    if isinstance(step, int) and isinstance(epoch, (int, float)) and epoch >= 1:
        return round(step / epoch)
    raise UnsupportedFeatureError(folder / TRAINER_STATE, "cannot tell how many optimizer steps an epoch has "
                                  "(max_steps is not a multiple of num_train_epochs and epoch < 1)")


def fix_epoch_hf(folder: Path, epoch: int, step: int | None, *, dry_run: bool, backup: Any,
                 keep_backup: bool) -> RepairResult:

    state = read_trainer_state(folder)
    epochs, within = target_position(epoch, step)
    per_epoch = steps_per_epoch(folder, state)
    if within >= per_epoch:
        raise UnsupportedFeatureError(folder, f"--step {within} is not inside an epoch of {per_epoch} optimizer "
                                      "steps; record a finished epoch with --complete")
    global_step = epochs * per_epoch + within
    values = {("epoch",): float(epochs) + within / per_epoch, ("global_step",): global_step}
    plan = _plan(folder, state, values, describe_action(epoch, step))
    plan.notes.append(f"{per_epoch} optimizer steps per epoch (from trainer_state.json); --step counts "
                      "optimizer steps for a Trainer folder")
    if plan.changes:
        plan.cannot_fix = _left_inconsistent(folder, state, global_step)
    return _carry_out(folder, state, plan, dry_run=dry_run, backup=backup, keep_backup=keep_backup)


def plan_step_resync(folder: Path) -> RepairPlan:
    """`counters.hf-step-mismatch`: trainer_state.json global_step := the step the folder is named for
    (else, for a folder not named checkpoint-N, the last step its log_history reached)."""
    state = read_trainer_state(folder)
    plan = RepairPlan(str(folder), "hf-trainer", "hf-trainer", "repair --fix counters.hf-step-mismatch",
                      progress_before=_describe(state))
    named = folder_step(folder)
    logged = [e.get("step") for e in state.get("log_history", []) if isinstance(e, dict)]
    last_logged = max((s for s in logged if isinstance(s, int)), default=None)
    if named is not None and last_logged is not None and last_logged > named:
        plan.cannot_fix.append(f"log_history goes up to step {last_logged}, past the folder's step {named}: "
                               "the folder name and the log disagree, so ckptkit does not guess; nothing changed")
        return plan
    target, why = ((named, f"the Trainer names the folder checkpoint-{{global_step}} when it saves, so the "
                           f"folder name ({folder.name}) is taken as the true global step")
                   if named is not None else
                   (last_logged, f"log_history reaches step {last_logged}, and the Trainer logs only steps it "
                                 "has taken"))
    current = state.get("global_step")
    if target is None or current == target or (named is None and isinstance(current, int) and current >= target):
        return plan
    plan.changes = plan_sets(TRAINER_STATE, state, {("global_step",): target})
    plan.files, plan.fixes = [str(folder / TRAINER_STATE)], ["counters.hf-step-mismatch"]
    plan.notes.append(why)
    after = dict(state, global_step=target)
    plan.progress_after = _describe(after)
    return plan


def _plan(folder: Path, state: dict[str, Any], values: dict[Any, Any], action: str) -> RepairPlan:
    plan = RepairPlan(str(folder), "hf-trainer", "hf-trainer", action,
                      progress_before=_describe(state))
    plan.changes = plan_sets(TRAINER_STATE, state, values)
    after = dict(state)
    apply_changes(after, plan.changes)
    plan.progress_after = _describe(after)
    if plan.changes:
        plan.files = [str(folder / TRAINER_STATE)]
    return plan


def _describe(state: dict[str, Any]) -> str:
    epoch = state.get("epoch")
    shown = f"{epoch:.4g}" if isinstance(epoch, float) else repr(epoch)
    return f"epoch {shown} (trainer_state.json), global step {state.get('global_step')!r}"


def _left_inconsistent(folder: Path, state: dict[str, Any], global_step: int) -> list[str]:
    out = []
    named = folder_step(folder)
    if named is not None and named != global_step:
        renamed = folder.with_name(f"checkpoint-{global_step}")
        out.append(f"the folder is named {folder.name} but global_step is now {global_step}: the Trainer finds "
                   f"checkpoints by that name; rename it yourself: mv '{folder}' '{renamed}'")
    for member in ("scheduler.pt", "optimizer.pt"):
        if (folder / member).exists():
            out.append(f"{member} was left as is: its step counters (scheduler last_epoch, optimizer step) "
                       f"still describe step {state.get('global_step')}; resume re-creates the LR schedule "
                       "position from them, not from global_step")
    logged = [e.get("step") for e in state.get("log_history", []) if isinstance(e, dict)]
    if logged and isinstance(logged[-1], int) and logged[-1] > global_step:
        out.append(f"log_history has entries up to step {logged[-1]}, past the new global_step; left as is")
    return out


def _carry_out(folder: Path, state: dict[str, Any], plan: RepairPlan, *, dry_run: bool, backup: Any,
               keep_backup: bool) -> RepairResult:
    result = RepairResult(plan, dry_run=dry_run)
    if plan.nothing_to_do or dry_run:
        return result
    target = folder / TRAINER_STATE
    apply_changes(state, plan.changes)
    text = json.dumps(state, indent=2, sort_keys=True) + "\n"   # as the Trainer writes it
    where = Path(backup) if backup is not None else default_backup_path(target) if keep_backup else None

    # A folder written under ckptkit's ExactResume has a manifest covering trainer_state.json:
    # renewed with the new bytes, as for any rewritten member (see repair/manifests.py).
    manifest = ManifestRefresh.covering(target)

    def verify(tmp: Path) -> None:
        if json.loads(tmp.read_text(encoding="utf-8")) != state:
            raise WriteVerificationError(target, "read back differently; nothing was replaced")
        if manifest is not None:
            manifest.take()

    try:
        atomic_write_file(target, lambda f: f.write(text.encode("utf-8")), verify=verify, backup=where)
    except BaseException:
        if manifest is not None:
            manifest.put_back()
        raise
    if manifest is not None:
        manifest.renew(state)
    result.written = True
    result.backups = [str(where)] if where is not None else []
    return result


def write_plan(folder: Path, plan: RepairPlan, *, backup: Any, keep_backup: bool) -> RepairResult:
    """Carry out a trainer_state.json plan made by this module (used by `repair`)."""
    if not os.path.isdir(folder):
        raise CkptkitError(folder, "not a folder")
    return _carry_out(folder, read_trainer_state(folder), plan, dry_run=False, backup=backup,
                      keep_backup=keep_backup)
