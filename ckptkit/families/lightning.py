"""PyTorch Lightning ``.ckpt``: ``epoch`` (0-based epoch being run), ``global_step``, and the fit
loop's progress under ``loops``. Where a fit resumes is read as Lightning 2.x's fit loop reads it
back (``_FitLoop.reset`` and ``on_run_start``): it starts at epoch ``epoch_progress.current.processed``,
one further when the save came from inside an epoch (``started`` > ``processed``: a step-triggered
save) at its last batch (``is_last_batch``); a run stopped by ``max_steps`` inside an epoch counts
that epoch as processed and goes on counting batches from the ones it ran (a resume with more
steps starts the next epoch at that batch index). Checked by resuming real Lightning 2.6 checkpoints:
epoch-end saves, step-triggered ones mid-epoch and at an epoch's last batch, and the file
``trainer.save_checkpoint`` writes after ``fit`` returns (``epoch`` = epochs run, ``is_last_batch``
still set: read from ``epoch`` and ``is_last_batch`` alone it looked one epoch further on).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Progress, ResumePrediction, Severity
from ckptkit.families.base import CounterValues, Family, TrapHit, Tree, dig, has, position_args, whole_epochs_only
from ckptkit.views import sections as S

_BATCH = ("loops", "fit_loop", "epoch_loop.batch_progress")
MISMATCH = "counters.epoch-step-mismatch"
STOPPED_INSIDE = "counters.max-steps-epoch-counted"
# Lightning 2.x: where the fit loop counts optimizer steps (trainer.global_step reads one of them).
STEP_COUNTERS = {
    "automatic": ("epoch_loop.automatic_optimization.optim_progress", "optimizer", "step", "total", "completed"),
    "manual": ("epoch_loop.manual_optimization.optim_step_progress", "total", "completed"),
}


def matches(tree: Tree) -> bool:
    return "pytorch-lightning_version" in tree or has("state_dict", "optimizer_states", "loops")(tree)


def progress(tree: Tree, path: Path) -> Progress:
    p = Progress(global_step=S.as_int(tree.get("global_step")))
    p.sources["global_step"] = f"key 'global_step' = {p.global_step}"
    epoch = S.as_int(tree.get("epoch"))
    batch = dig(tree, *_BATCH)
    epochs = dig(tree, "loops", "fit_loop", "epoch_progress", "current")
    processed, started = (S.as_int(dig(epochs, name)) for name in ("processed", "started"))
    if isinstance(batch, dict) and processed is not None and started is not None:
        done_in_epoch = S.as_int(dig(batch, "current", "processed")) or 0
        inside = started > processed     # saved while an epoch ran (a step-triggered save)
        last = bool(batch.get("is_last_batch"))
        if last or (not inside and not done_in_epoch):
            p.epochs_completed, p.step_in_epoch, p.epoch_complete = processed + (inside and last), 0, True
        else:   # inside an epoch; or stopped by max_steps there, which the loops count as processed
            p.epochs_completed, p.step_in_epoch, p.epoch_complete = processed, done_in_epoch, done_in_epoch == 0
        how = (f", with batch progress ({done_in_epoch} batches, is_last_batch={last})" if inside else
               f", batch progress {done_in_epoch} (a max_steps stop, which Lightning counts on from)"
               if done_in_epoch and not last else " (saved between epochs)")
        p.sources["epochs_completed"] = (f"loops.fit_loop.epoch_progress.current.processed = {processed}, "
                                         f"started = {started}{how}; key 'epoch' = {epoch}")
    elif epoch is not None and isinstance(batch, dict):
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
                            restores=["state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks"],
                            refuses=_weights_only(tree))


def _weights_only(tree: Tree) -> str | None:
    """Lightning 2.x `_CheckpointConnector.restore_optimizers_and_schedulers` raises KeyError when
    'optimizer_states' (then 'lr_schedulers') is missing, as ModelCheckpoint(save_weights_only=True)
    writes them: such a file loads with load_from_checkpoint, and no fit resumes from it."""
    missing = next((key for key in ("optimizer_states", "lr_schedulers") if key not in tree), None)
    if missing is None:
        return None
    what = "optimizer" if missing == "optimizer_states" else "learning rate scheduler"
    return (f"it has no '{missing}' (ModelCheckpoint(save_weights_only=True) writes the model only), and Lightning "
            f"raises KeyError 'Trying to restore {what} state but checkpoint contains only the model'; "
            f"load it with YourModule.load_from_checkpoint(path) "
            f"and start a new fit, or resume from a checkpoint saved without save_weights_only")


def left_as_is(tree: Tree) -> list[str]:
    return ["Lightning's global_step and its loops' batch and optimizer totals were left as is; "
            "the file name (epoch=E-step=S) is not renamed"]


def traps(tree: Tree, path: Path, p: Progress) -> Iterator[TrapHit]:
    """Counters Lightning writes from one value that disagree: `epoch` is written from the loops'
    epoch_progress.current.completed, and global_step from the loops' optimizer-step counter."""
    fit = dig(tree, "loops", "fit_loop")
    epoch, step = S.as_int(tree.get("epoch")), S.as_int(tree.get("global_step"))
    completed = S.as_int(dig(fit, "epoch_progress", "current", "completed"))
    if epoch is not None and completed is not None and epoch != completed:
        yield TrapHit(MISMATCH, Severity.WARNING, "epoch",
                      f"'epoch' = {epoch} but loops.fit_loop.epoch_progress.current.completed = {completed}: "
                      "Lightning writes both from its current_epoch, so they cannot both be true; a resume "
                      f"takes the loops' epoch {completed}, while the file name and tools reading 'epoch' say "
                      f"{epoch}", _epoch_fix(fit, completed))
    if step is not None:
        yield from _step_traps(tree, fit, step)
    yield from _stopped_inside_an_epoch(fit)


def _stopped_inside_an_epoch(fit: Any) -> Iterator[TrapHit]:
    """A fit that max_steps stopped inside an epoch: the loops count that epoch as processed
    (started = processed) while its batch loop shows the batches it ran (not the last). Resumed
    with a larger max_steps, Lightning 2.6 starts the next epoch with its batch count at that
    number: checked on a real run, the rest of the stopped epoch is never trained and the next
    epoch trains that many batches fewer (its batch indices start there, its data at the start)."""
    current = dig(fit, "epoch_progress", "current")
    batch = dig(fit, "epoch_loop.batch_progress")
    processed, started = S.as_int(dig(current, "processed")), S.as_int(dig(current, "started"))
    done = S.as_int(dig(batch, "current", "processed")) or 0
    if (processed and started == processed and done and isinstance(batch, dict)
            and not batch.get("is_last_batch")):
        yield TrapHit(STOPPED_INSIDE, Severity.WARNING, "loops",
                      f"training stopped {done} batch{'es' if done > 1 else ''} into epoch {processed} (max_steps), "
                      f"but Lightning's loops count that epoch as processed (epoch_progress.current.processed = "
                      f"{processed}): a resume with a larger max_steps starts epoch {processed + 1} as if {done} "
                      f"batch{'es' if done > 1 else ''} of it were done, so the rest of epoch {processed} is never "
                      f"trained and epoch {processed + 1} trains {done} batch{'es' if done > 1 else ''} fewer")


def _step_traps(tree: Tree, fit: Any, step: int) -> Iterator[TrapHit]:
    """Lightning's global_step is its optimizer-step counter in the loops: automatic optimization's
    optim_progress.optimizer.step.total.completed, or manual optimization's optim_step_progress
    (whichever mode ran; the other stays 0). Accumulation does not enter: both count real steps."""
    counted = {mode: S.as_int(dig(fit, *keys)) for mode, keys in STEP_COUNTERS.items()}
    known = {mode: value for mode, value in counted.items() if value is not None}
    expected = {v for v in known.values() if v} or ({0} if known else set())
    if expected and step not in expected:
        said = " and ".join(f"loops.fit_loop.{'.'.join(STEP_COUNTERS[mode])} = {value}"
                            for mode, value in known.items() if value in expected)
        yield TrapHit(MISMATCH, Severity.WARNING, "global_step",
                      f"global_step = {step} but {said}: Lightning writes global_step from that optimizer-step "
                      f"counter (gradient accumulation included), so they cannot both be true; a resume takes "
                      f"the loops' {max(expected)} steps (schedule position, max_steps, step-based saving), "
                      f"while the file name, ckptkit ls/latest and tools reading global_step say {step}")
        return
    batches = S.as_int(dig(fit, "epoch_loop.batch_progress", "total", "processed"))
    one_optimizer = isinstance(tree.get("optimizer_states"), list) and len(tree["optimizer_states"]) == 1
    if batches is not None and counted["manual"] == 0 and one_optimizer and step > batches:
        yield TrapHit(MISMATCH, Severity.WARNING, "global_step",
                      f"global_step = {step} optimizer steps but loops.fit_loop batch progress has processed "
                      f"{batches} batches in all: with automatic optimization each step takes at least one "
                      "batch, so they cannot both be true; the step counter (schedule, step-based saving and "
                      "max_steps) runs ahead of the data")


def _epoch_fix(fit: Any, completed: int) -> tuple[str, ...]:
    batch = dig(fit, "epoch_loop.batch_progress")
    done = S.as_int(dig(batch, "current", "processed")) or 0
    if isinstance(batch, dict) and batch.get("is_last_batch"):
        return ("fix-epoch", *position_args(completed + 1, 0))
    return ("fix-epoch", *position_args(completed, done))


LIGHTNING = Family("lightning", "PyTorch Lightning .ckpt", matches, progress, record, (("global_step", "global_step"),),
                   resume=resume, traps=traps, left_as_is=left_as_is,
                   counter_keys=(("epoch",), ("global_step",), _BATCH + ("is_last_batch",),
                                 _BATCH + ("current", "processed")))
