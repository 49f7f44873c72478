"""Ultralytics YOLO (``weights/last.pt``, ``best.pt``, ``epoch{N}.pt``): ultralytics/ultralytics
``ultralytics/engine/trainer.py`` (``save_model``, ``resume_training``, ``final_eval``) and
``ultralytics/utils/torch_utils.py`` (``strip_optimizer``), read at 0001630.

- ``save_model`` runs at the end of each epoch and stores ``epoch`` = ``self.epoch``, the 0-based
  index of the epoch just trained, with ``"model": None`` and the model in ``ema`` (a pickled
  ``DetectionModel``... in half precision), ``updates``, ``optimizer``, ``scaler``,
  ``best_fitness``, ``train_args`` (``vars(args)``), ``train_metrics``, ``train_results``.
- ``resume_training`` starts at ``ckpt.get("epoch", -1) + 1`` and asserts ``0 < start_epoch <
  epochs`` ("training to N epochs is finished, nothing to resume"). No LR scheduler is saved: it
  is set from the epoch (``scheduler.last_epoch = start_epoch - 1``).
- At the end of training ``final_eval`` runs ``strip_optimizer`` on ``last.pt`` and ``best.pt``:
  the model moves to ``model``, ``optimizer``, ``ema``, ``updates``, ``scaler``,
  ``best_fitness`` become None and ``epoch`` -1; ``train_results`` (results.csv, whose ``epoch``
  column counts from 1) still says how many epochs ran.
- Loaded with ``weights_only=False`` (its ``torch_load``): the pickled modules are its own.

YOLOv5's own repository (ultralytics/yolov5 ``train.py``, ``utils/torch_utils.py``
``smart_resume``) writes the same layout with ``opt`` (``vars(opt)``) for ``train_args`` and the
training model itself in ``model`` beside ``ema``; ``smart_resume`` also starts at ``epoch + 1``
but refuses only a finished file (``start_epoch > 0``): past the planned epochs it fine-tunes on.
"""
from __future__ import annotations

from pathlib import Path

from ckptkit.core.checkpoint import Progress, ResumePrediction
from ckptkit.families.base import CounterValues, Family, FamilyNames, Tree, UnrepresentableProgress, whole_epochs_only
from ckptkit.views import sections as S

SYSTEM = "Ultralytics YOLO"
HOW = "train(resume=True)"
YOLOV5, YOLOV5_HOW = "YOLOv5 train.py", "--resume"


def _args(tree: Tree) -> dict[str, object] | None:
    """The run's arguments: the ultralytics package's 'train_args', YOLOv5's 'opt'."""
    args = tree.get("train_args", tree.get("opt"))
    return args if isinstance(args, dict) else None


def matches(tree: Tree) -> bool:
    return "epoch" in tree and "ema" in tree and "model" in tree and _args(tree) is not None


def _yolov5(tree: Tree) -> bool:
    return "train_args" not in tree


def _planned_epochs(tree: Tree) -> int | None:
    args = _args(tree)
    return S.as_int(args.get("epochs")) if args is not None else None


def _epochs_run(tree: Tree) -> int | None:
    """The epochs results.csv recorded (its 'epoch' column counts from 1), kept by strip_optimizer."""
    results = tree.get("train_results")
    column = results.get("epoch") if isinstance(results, dict) else None
    epochs = [e for e in (S.as_int(v) for v in column) if e is not None] if isinstance(column, list) else []
    return max(epochs) if epochs else None


def progress(tree: Tree, path: Path) -> Progress:
    p = Progress()
    epoch = S.as_int(tree.get("epoch"))
    if epoch == -1:
        p.training_finished = True
        p.sources["training_finished"] = ("key 'epoch' = -1: strip_optimizer finished the run (optimizer and EMA "
                                          "dropped, the model kept in half precision)")
        ran = _epochs_run(tree)
        if ran is not None:
            p.epochs_completed, p.epoch_complete = ran, True
            p.sources["epochs_completed"] = f"key 'train_results' (results.csv) column 'epoch' reaches {ran}"
    elif epoch is not None and epoch >= 0:
        p.epochs_completed, p.epoch_complete = epoch + 1, True
        p.sources["epochs_completed"] = (f"key 'epoch' = {epoch}: the 0-based index of the last epoch trained "
                                         "(saved after each epoch; a resume starts at epoch + 1)")
    else:
        p.notes.append("no 'epoch' a resume can use")
    planned = _planned_epochs(tree)
    if planned is not None and p.epochs_completed is not None and p.training_finished is None:
        p.training_finished = p.epochs_completed >= planned
    updates = S.as_int(tree.get("updates"))
    if updates is not None:
        p.global_step = updates
        p.sources["global_step"] = f"key 'updates' = {updates}: the EMA's updates, one per optimizer step"
    return p


def record(tree: Tree, epochs: int, step: int) -> CounterValues:
    whole_epochs_only(step, "Ultralytics saves at the end of each epoch and stores no place inside one")
    if epochs < 1:
        raise UnrepresentableProgress("Ultralytics stores the index of the last epoch trained, and -1 marks a "
                                      "finished run: no value says that no epoch is done")
    return {("epoch",): epochs - 1}


def resume(tree: Tree, path: Path, p: Progress) -> ResumePrediction:
    epoch = S.as_int(tree.get("epoch"))
    start = (epoch if epoch is not None else -1) + 1
    planned = _planned_epochs(tree)
    restores: list[str] = [k for k in ("model", "ema", "optimizer", "scaler", "best_fitness", "updates")
                           if tree.get(k) is not None]
    if _yolov5(tree):
        prediction = ResumePrediction(YOLOV5, YOLOV5_HOW, start_epoch=start + 1, start_batch=0, restores=restores)
        if start <= 0:
            prediction.refuses = ("its smart_resume asserts a start epoch above 0: 'training to N epochs is finished, "
                                  "nothing to resume'; start a new training from these weights instead")
        return prediction
    prediction = ResumePrediction(SYSTEM, HOW, start_epoch=start + 1, start_batch=0, restores=restores)
    if start <= 0 or (planned is not None and start >= planned):
        total = f"{planned} epochs" if planned is not None else "its epochs"
        prediction.refuses = (f"its resume_training asserts 0 < start epoch ({start}) < epochs: 'training to {total} "
                              "is finished, nothing to resume'; start a new training from these weights instead")
    return prediction


# 'model' first: YOLOv5's training model, and the package's model once stripped; else the package's 'ema'.
ULTRALYTICS = Family(
    "ultralytics", "Ultralytics YOLO / YOLOv5 .pt (epoch = 0-based index of the last epoch trained, -1 once "
    "finished; the model in 'model' or 'ema')",
    matches, progress, record,
    names=FamilyNames(recent=("last.pt",), best=("best.pt",)),
    resume=resume, counter_keys=(("epoch",), ("updates",)), model_keys=("model", "ema"), schedule_from_epoch=True,
)
