"""Fashion recommender (``optimized_model_epoch_{E}_recall_{R}.pt``): ktoan911/
Fashion-Recommendation-System-, ``train.py`` / ``train_optimized.py`` and ``resume_training.py``.

- Saves ``"epoch": epoch + 1`` (epochs finished); ``resume_training.py`` starts at
  ``checkpoint.get("epoch", 0)`` and loops ``range(start_epoch, args.epochs)``.
- Saves ``OneCycleLR`` state with its ``total_steps``; ``load_state_dict`` restores that total,
  so a resume with more ``--epochs`` raises "Tried to step N times" once the total is reached.
- No ``GradScaler`` state although it trains with ``--mixed-precision``.
- The ``final_*`` file stores ``final_loss`` / ``final_recall_at_10`` and no ``loss``;
  ``load_checkpoint`` prints ``checkpoint.get('loss', 'N/A'):.4f``, which raises on 'N/A'.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ckptkit.core.checkpoint import Progress, ResumePrediction, Severity
from ckptkit.families.base import CounterValues, Family, FamilyNames, TrapHit, Tree, has_any, whole_epochs_only
from ckptkit.families.ckptkit_position import POSITION_KEYS, has_position, read_position, record_position
from ckptkit.views import sections as S

NAME = re.compile(r"epoch_(?P<epoch>\d+)_recall_(?P<recall>\d+(?:\.\d+)?)")
SYSTEM = "fashion recommender"
HOW = "resume_training.py --checkpoint"


def progress(tree: Tree, path: Path) -> Progress:
    p = Progress()
    epoch = S.as_int(tree.get("epoch"))
    if epoch is not None:
        p.epochs_completed, p.epoch_complete = epoch, True
        p.sources["epochs_completed"] = f"key 'epoch' = {epoch}: epochs finished (saved as epoch + 1)"
    else:
        p.notes.append("no 'epoch' key: a resume would restart at the first epoch")
    read_position(tree, p)
    return p


def record(tree: Tree, epochs: int, step: int) -> CounterValues:
    if has_position(tree):
        # ckptkit's trainer: 'epoch' (epochs finished) repeats data_position.epoch
        return {**record_position(tree, epochs, step), ("epoch",): epochs}
    whole_epochs_only(step, "this layout stores finished epochs only ('epoch' = epochs finished)")
    return {("epoch",): epochs}


def resume(tree: Tree, path: Path, p: Progress) -> ResumePrediction:
    epoch = S.as_int(tree.get("epoch")) or 0
    loses = ["no GradScaler state: mixed-precision loss scaling starts over"]
    if p.step_in_epoch:
        loses.insert(0, f"the {p.step_in_epoch} batches already trained in that epoch are trained again")
    restores: list[str] = [k for k in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict") if k in tree]
    return ResumePrediction(SYSTEM, HOW, start_epoch=epoch + 1, start_batch=0, restores=restores, loses=loses)


def traps(tree: Tree, path: Path, p: Progress) -> Iterator[TrapHit]:
    sched = tree.get("scheduler_state_dict")
    total = S.as_int(sched.get("total_steps")) if isinstance(sched, dict) else None
    if total is not None:
        yield TrapHit(
            "counters.fixed-schedule-length", Severity.INFO, "scheduler_state_dict",
            f"OneCycleLR was built for total_steps = {total} and resume_training.py restores that total: "
            "resuming with more --epochs than the run was started with raises 'Tried to step "
            f"{total + 1} times' once step {total} is reached; keep --epochs, or drop the scheduler state "
            "to build a new schedule for the remaining epochs")
    if "final_loss" in tree and "loss" not in tree:     # the final_* file, as train.py writes it
        yield TrapHit(
            "counters.resume-will-crash", Severity.WARNING, "loss",
            "expected a 'loss' key (resume_training.py prints checkpoint.get('loss', 'N/A') with :.4f), "
            "found none: resuming from this file raises ValueError before training. The final_* file is "
            "written this way; resume from the last epoch file instead")


FASHION = Family(
    "retrieval", "fashion recommender .pt (epoch = epochs finished, loss, recall_at_10, histories)",
    has_any("recall_at_10", "val_recalls", "train_losses"), progress, record,
    names=FamilyNames(best=("best_*",), final=("final_*",)),
    resume=resume, traps=traps, counter_keys=(("epoch",), ("global_step",), *POSITION_KEYS),
    epoch_histories=True, name_pattern=NAME,
    amp_evidence="the fashion recommender's train.sh and run_resume_training.sh pass --mixed-precision",
)
