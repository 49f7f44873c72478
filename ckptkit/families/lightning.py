"""PyTorch Lightning ``.ckpt``: ``epoch`` (0-based epoch being run), ``global_step``, and the fit
loop's progress under ``loops``. Whether the epoch is finished shows in the batch loop's
``is_last_batch``: the epoch counters are bumped at different moments for step-triggered and
epoch-end saves (checked against real Lightning 2.6 checkpoints), ``is_last_batch`` is not.
"""
from __future__ import annotations

from pathlib import Path

from ckptkit.core.checkpoint import Progress, ResumePrediction
from ckptkit.families.base import CounterValues, Family, Tree, dig, has, whole_epochs_only
from ckptkit.views import sections as S

_BATCH = ("loops", "fit_loop", "epoch_loop.batch_progress")


def matches(tree: Tree) -> bool:
    return "pytorch-lightning_version" in tree or has("state_dict", "optimizer_states", "loops")(tree)


def progress(tree: Tree, path: Path) -> Progress:
    p = Progress(global_step=S.as_int(tree.get("global_step")))
    p.sources["global_step"] = f"key 'global_step' = {p.global_step}"
    epoch = S.as_int(tree.get("epoch"))
    batch = dig(tree, *_BATCH)
    if epoch is not None and isinstance(batch, dict):
        done_in_epoch = S.as_int(dig(batch, "current", "processed")) or 0
        if batch.get("is_last_batch"):
            p.epochs_completed, p.step_in_epoch, p.epoch_complete = epoch + 1, 0, True
        else:
            p.epochs_completed, p.step_in_epoch = epoch, done_in_epoch
            p.epoch_complete = done_in_epoch == 0
        p.sources["epochs_completed"] = (f"key 'epoch' = {epoch} (0-based epoch being run) with "
                                         f"loops.fit_loop batch progress ({done_in_epoch} batches, "
                                         f"is_last_batch={bool(batch.get('is_last_batch'))})")
    elif epoch is not None:
        p.epochs_completed = epoch
        p.sources["epochs_completed"] = f"key 'epoch' = {epoch} (Lightning's current_epoch)"
    return p


def record(tree: Tree, epochs: int, step: int) -> CounterValues:
    batch = dig(tree, *_BATCH)
    if not isinstance(batch, dict) or not isinstance(batch.get("current"), dict):
        whole_epochs_only(step, "this checkpoint has no loops.fit_loop batch progress")
        return {("epoch",): epochs}
    if step == 0 and epochs > 0:      # as Lightning writes at an epoch's end: last batch of epoch-1
        values: CounterValues = {("epoch",): epochs - 1, _BATCH + ("is_last_batch",): True}
    else:
        values = {("epoch",): epochs, _BATCH + ("is_last_batch",): False, _BATCH + ("current", "processed"): step}
    # Lightning resumes its epoch from the loops' epoch_progress ('epoch' is written from its
    # `completed`); the epoch being run is ready and started, and processed once its batches ran.
    current = dig(tree, "loops", "fit_loop", "epoch_progress", "current")
    if isinstance(current, dict):
        running = values[("epoch",)]
        counts = {"completed": running, "ready": running + 1, "started": running + 1,
                  "processed": running + 1 if step == 0 and epochs > 0 else running}
        for name, value in counts.items():
            if name in current:
                values[("loops", "fit_loop", "epoch_progress", "current", name)] = value
    return values


def resume(tree: Tree, path: Path, p: Progress) -> ResumePrediction:
    return ResumePrediction("Lightning", "Trainer.fit(ckpt_path=...)", global_step=p.global_step,
                            restores=["state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks"])


def left_as_is(tree: Tree) -> list[str]:
    return ["Lightning's global_step and its loops' batch and optimizer totals were left as is; "
            "the file name (epoch=E-step=S) is not renamed"]


LIGHTNING = Family("lightning", "PyTorch Lightning .ckpt", matches, progress, record, (("global_step", "global_step"),),
                   resume=resume, left_as_is=left_as_is,
                   counter_keys=(("epoch",), ("global_step",), _BATCH + ("is_last_batch",),
                                 _BATCH + ("current", "processed")))
