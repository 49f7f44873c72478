"""EnStack ``training_state.pth`` beside a ``save_pretrained`` model (``last_checkpoint/``):
TCTri205/EnStack-paper, ``src/trainer.py`` (read at several commits).

- ``epoch`` is 1-based; ``step`` counts the batches done in it, and ``step == 0`` marks its
  end; ``total_batches`` exists from 34bc6db on (older files: ambiguous step 0).
- ``save_checkpoint`` writes ``.tmp_{name}_*`` (``tempfile.mkdtemp``), moves the old folder to
  ``.backup_{name}``, then the new one into place; ``_cleanup_temp_checkpoints`` deletes both
  kinds at the next ``train()``, and the resume scripts skip ``.``-prefixed folders.
- ``train(resume_from=...)`` (since 01ce568): an end-of-epoch state (E, 0) trains epoch E again
  (the "saved at end of epoch" branch is overridden by the mid-epoch branch); (E, S) with
  S < batches continues epoch E at batch S; the loaded scheduler is then stepped forward again
  by (start_epoch - 1) x batches + start_step; no sampler or RNG state is saved.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ckptkit.core.checkpoint import Progress, ResumePrediction, Severity
from ckptkit.families.base import (
    CounterValues,
    Family,
    FamilyNames,
    TrapHit,
    Tree,
    UnrepresentableProgress,
    has,
    has_any,
)
from ckptkit.families.ckptkit_position import POSITION_KEYS, has_position, read_position, record_position
from ckptkit.views import sections as S

STATE_FILE = "training_state.pth"
SYSTEM = "EnStack"
HOW = "train(resume_from=...)"
TEMPORARY = re.compile(r"^\.tmp_(?P<name>.+)_[^_]+$")
BACKUP = re.compile(r"^\.backup_(?P<name>.+)$")


def matches(tree: Tree) -> bool:
    return "total_batches" in tree or (has("epoch", "step")(tree) and has_any("best_val_f1", "best_val_acc")(tree))


def progress(tree: Tree, path: Path) -> Progress:
    p = Progress()
    epoch, step, total = (S.as_int(tree.get(k)) for k in ("epoch", "step", "total_batches"))
    p.steps_per_epoch = total
    if total is not None:
        p.sources["steps_per_epoch"] = f"key 'total_batches' = {total}"
    if epoch is None:
        p.notes.append("no 'epoch' key: a resume would restart at the first epoch")
        return p
    if not step:
        p.epochs_completed, p.epoch_complete, p.step_in_epoch = epoch, True, 0
        p.sources["epochs_completed"] = f"key 'epoch' = {epoch} with 'step' = 0 (0 marks the end of the epoch)"
        if total is None:
            p.notes.append(f"step=0 without total_batches is ambiguous: it marks the end of epoch {epoch} "
                           f"by this layout's convention, but cannot be told apart from 'epoch {epoch} "
                           "not started'")
    elif total is not None and step >= total:
        p.epochs_completed, p.epoch_complete, p.step_in_epoch = epoch, True, 0
        p.sources["epochs_completed"] = f"key 'step' = {step} >= total_batches = {total}: epoch {epoch} complete"
    else:
        p.epochs_completed, p.epoch_complete, p.step_in_epoch = epoch - 1, False, step
        p.sources["epochs_completed"] = (f"key 'epoch' = {epoch} (1-based) with 'step' = {step}: "
                                         f"epoch {epoch} in progress")
        p.sources["step_in_epoch"] = f"key 'step' = {step}"
    if has_position(tree):   # ckptkit's trainer: global_step and data_position agree with epoch/step
        read_position(tree, p)
    else:
        p.global_step = S.as_int(tree.get("global_step"))
    return p


def record(tree: Tree, epochs: int, step: int) -> CounterValues:
    """A finished epoch E is written (E, total_batches) where total_batches is stored: EnStack's
    resume (since 01ce568) trains E again from (E, 0) but starts E + 1 from step >= its batches.
    Without total_batches, (E, 0) as its own fix_checkpoint_epoch.py writes. ckptkit's trainer
    keeps (E, 0): it resumes from data_position."""
    total = S.as_int(tree.get("total_batches"))
    if step == 0 and epochs > 0 and total is not None and total >= 1 and not has_position(tree):
        values: CounterValues = {("epoch",): epochs, ("step",): total}
    elif step == 0:
        values = {("epoch",): epochs, ("step",): 0}
    elif total is not None and step >= total:
        raise UnrepresentableProgress(f"step {step} is not inside an epoch of total_batches = {total} "
                                      "batches; record a finished epoch with --complete instead")
    else:
        values = {("epoch",): epochs + 1, ("step",): step}
    if has_position(tree):   # ckptkit's trainer: data_position and global_step move with epoch/step
        values.update(record_position(tree, epochs, step))
    return values


def resume(tree: Tree, path: Path, p: Progress) -> ResumePrediction | None:
    epoch, step, total = (S.as_int(tree.get(k)) for k in ("epoch", "step", "total_batches"))
    if epoch is None:
        return ResumePrediction(SYSTEM, HOW, start_epoch=1, start_batch=0, loses=["no 'epoch': training restarts"])
    loses = ["the loaded LR scheduler is stepped forward again by the batches already done, so the "
             "learning rate is advanced twice"]
    if step and (total is None or step < total):
        start, batch = epoch, step
        loses.append("no sampler or RNG state: the batches it skips are not the ones that were trained")
    elif step:
        start, batch = epoch + 1, 0
    else:
        start, batch = max(epoch, 1), 0
        if epoch >= 1:
            loses.insert(0, f"epoch {epoch} is finished but is trained again (step = 0 falls through to the "
                            "mid-epoch branch)")
    restores = [k for k in ("optimizer_state_dict", "scheduler_state_dict", "scaler_state_dict") if k in tree]
    return ResumePrediction(SYSTEM, HOW, start_epoch=start, start_batch=batch,
                            restores=["model weights (save_pretrained)", *restores], loses=loses)


def traps(tree: Tree, path: Path, p: Progress) -> Iterator[TrapHit]:
    """Where inside an epoch the checkpoint was taken, and whether that can be told."""
    epoch, step, total = (S.as_int(tree.get(k)) for k in ("epoch", "step", "total_batches"))
    if total is not None and total < 1:
        yield TrapHit("counters.position-out-of-range", Severity.ERROR, "total_batches",
                      f"expected total_batches >= 1, found {total}: an epoch has at least one batch, so "
                      "'step' cannot be placed in it and the share of the epoch done is unknown")
    if step is not None and step < 0:
        yield TrapHit("counters.position-out-of-range", Severity.ERROR, "step",
                      f"expected 0 <= step <= total_batches{f' = {total}' if total is not None else ''}, "
                      f"found step = {step}: a batch count cannot be negative, so this position names no "
                      "batch of the data and a resume from it would skip or repeat batches")
    if epoch is None or (step is not None and step < 0) or (total is not None and total < 1):
        return
    fix_complete = ("fix-epoch", "--epoch", str(epoch), "--complete")
    if step and total is not None and step > total:
        yield TrapHit("counters.step-past-epoch-end", Severity.ERROR, "step",
                      f"expected step <= total_batches = {total}, found step = {step}: the counters "
                      "cannot both be right", fix_complete)
    elif step and total is not None and step < total:
        yield TrapHit("counters.incomplete-epoch", Severity.INFO, "step",
                      f"epoch {epoch} incomplete, {100.0 * step / total:.1f}% done ({step}/{total} batches); "
                      f"resume continues epoch {epoch} at batch {step}. If epoch {epoch} actually finished, "
                      "record that with the fix command", fix_complete)
    elif step and total is None:
        yield TrapHit("counters.incomplete-epoch", Severity.INFO, "step",
                      f"epoch {epoch} in progress at batch {step} (no total_batches stored, so the share "
                      f"done is unknown); resume continues epoch {epoch} at batch {step}", fix_complete)
    elif not step and total is None:
        yield TrapHit("counters.ambiguous-step-zero", Severity.WARNING, "step",
                      f"step = 0 without total_batches is ambiguous: by this layout's convention it marks "
                      f"the end of epoch {epoch}, but it cannot be told apart from 'epoch {epoch} not "
                      "started'; store total_batches, or confirm with the fix command", fix_complete)


ENSTACK = Family(
    "training-state", "EnStack training_state.pth (epoch 1-based, step with 0 = end of epoch, total_batches)",
    matches, progress, record, (("steps_per_epoch", "total_batches"),),
    names=FamilyNames(recent=("last_checkpoint",), best=("best_model",), temporary=TEMPORARY, backup=BACKUP,
                      state_file=STATE_FILE),
    resume=resume, traps=traps,
    counter_keys=(("epoch",), ("step",), ("total_batches",), ("global_step",), *POSITION_KEYS),
)
