"""LlamaRec retriever (``checkpoint-recent.pth``, ``best_acc_model.pth``): HSandz/LlamaRec,
``trainer/base.py`` and ``trainer/loggers.py`` at 790eda5 (the only commit with a resume).

- ``validate(epoch, ...)`` gets the 0-based loop index and logs ``'epoch': epoch + 1``, which
  ``RecentModelLogger`` stores: the stored ``epoch`` is the number of epochs finished.
- ``_load_checkpoint`` sets ``start_epoch = checkpoint['epoch']`` and ``train()`` loops
  ``range(start_epoch, num_epochs)``: stored 5 starts the 6th epoch at batch 0.
- ``train()`` calls ``validate(0, 0)`` before any training when ``start_epoch == 0``: that saves
  ``checkpoint-recent.pth`` with epoch 1, the initial weights and an optimizer that never
  stepped; the validation after the first real epoch logs epoch 1 again and is not saved.
- ``best_acc_model.pth`` has ``epoch`` only when the recent logger wrote it in the same call.
- Not saved: LR scheduler, ``accum_iter``, best metric, early-stopping patience.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ckptkit.core.checkpoint import Progress, ResumePrediction, Severity
from ckptkit.families.base import (
    CounterValues,
    Family,
    FamilyNames,
    TrapHit,
    Tree,
    ckptkit_layout,
    optimizer_never_stepped,
    whole_epochs_only,
)
from ckptkit.families.ckptkit_position import POSITION_KEYS, has_position, read_position, record_position
from ckptkit.views import sections as S

RECENT = "checkpoint-recent.pth"
BEST = "best_acc_model.pth"
FINAL = RECENT + ".final"      # listed in the guide; upstream never calls the logger that writes it
SYSTEM = "LlamaRec retriever"
HOW = "--resume_from_checkpoint"
_KEYS = {"model_state_dict", "optimizer_state_dict", "epoch"}


def matches(tree: Tree) -> bool:
    return "model_state_dict" in tree and (set(tree) <= _KEYS or ckptkit_layout(tree) == "recsys")


def progress(tree: Tree, path: Path) -> Progress:
    p = Progress()
    epoch = S.as_int(tree.get("epoch"))
    if epoch == 1 and untrained(tree):
        p.epochs_completed, p.epoch_complete = 0, True
        p.sources["epochs_completed"] = (f"key 'epoch' = {epoch}, but the optimizer never stepped: saved by "
                                         "validate(0) before any training, so no epoch is done")
    elif epoch is not None:
        p.epochs_completed, p.epoch_complete = epoch, True
        p.sources["epochs_completed"] = (f"key 'epoch' = {epoch}: epochs finished (LlamaRec logs the 0-based "
                                         "loop index + 1 and resumes at range(epoch, num_epochs))")
    else:
        p.notes.append("no 'epoch' key: a resume would restart at the first epoch")
    if path.name.endswith(".final"):
        p.training_finished = True
        p.sources["training_finished"] = "file name ends with '.final' (written when training completed)"
    read_position(tree, p)   # ckptkit's trainer: where inside the next epoch an interrupt stopped
    return p


def untrained(tree: Tree) -> bool:
    """Saved before the first optimizer step (validate(0) at the start of train())."""
    return optimizer_never_stepped(tree.get("optimizer_state_dict"))


def record(tree: Tree, epochs: int, step: int) -> CounterValues:
    if has_position(tree):
        return {**record_position(tree, epochs, step), ("epoch",): epochs}
    whole_epochs_only(step, "LlamaRec saves 'epoch' = epochs finished and resumes at the start of the next one")
    return {("epoch",): epochs}


def resume(tree: Tree, path: Path, p: Progress) -> ResumePrediction:
    epoch = S.as_int(tree.get("epoch"))
    start = epoch if epoch is not None and epoch >= 0 else 0
    loses = ["the LR schedule, accum_iter, best metric and early-stopping patience start over"]
    if p.step_in_epoch:
        loses.insert(0, f"the {p.step_in_epoch} batches already trained in that epoch are trained again")
    if epoch is None:
        loses.insert(0, "no 'epoch' key: every epoch is trained again on top of these weights")
    restores: list[str] = [k for k in ("model_state_dict", "optimizer_state_dict") if k in tree]
    return ResumePrediction(SYSTEM, HOW, start_epoch=start + 1, start_batch=0, restores=restores, loses=loses)


def traps(tree: Tree, path: Path, p: Progress) -> Iterator[TrapHit]:
    epoch = S.as_int(tree.get("epoch"))
    if epoch == 1 and untrained(tree):     # validate(0) logs exactly epoch 1
        yield TrapHit(
            "counters.untrained-progress", Severity.WARNING, "epoch",
            "'epoch' = 1 claims a finished epoch but the optimizer never stepped (its state is empty): this "
            "is the file LlamaRec saves before training starts (validate(0) logs epoch 1), left in place "
            "when a run dies in its second epoch. --resume_from_checkpoint would skip the first epoch on "
            "untrained weights; record that no epoch is done",
            ("fix-epoch", "--epoch", "0", "--complete"))


LLAMAREC = Family(
    "recsys", "LlamaRec retriever .pth (model_state_dict, optimizer_state_dict, epoch = epochs finished)",
    matches, progress, record,
    names=FamilyNames(recent=(RECENT,), best=(BEST,), final=(FINAL,)),
    resume=resume, traps=traps,
    counter_keys=(("epoch",), ("global_step",), *POSITION_KEYS),
)
