"""torchvision's reference training scripts and the scripts built on them (DETR, DeiT, MAE, ...):
``model``, ``optimizer``, ``epoch``, ``args`` (with ``lr_scheduler``, ``model_ema``, ``scaler``
where they have one). Read in pytorch/vision ``references/classification/train.py``,
facebookresearch/detr ``main.py`` at 29901c5, facebookresearch/deit ``main.py`` at 7e160fe and
facebookresearch/mae ``util/misc.py`` at efb2a80.

- Each epoch loop ``for epoch in range(args.start_epoch, args.epochs)`` trains the epoch, then
  saves ``'epoch': epoch`` (``checkpoint.pth`` and ``model_{epoch}.pth`` /
  ``checkpoint{epoch:04}.pth`` / ``checkpoint-{epoch}.pth``): the 0-based index of the last epoch
  trained, so epoch + 1 epochs are done.
- ``--resume`` sets ``args.start_epoch = checkpoint['epoch'] + 1``. The pickled ``args`` is the
  argparse.Namespace of the run, which always has ``start_epoch`` (the ``--start-epoch`` flag the
  resume overwrites): that field, with ``model`` and ``epoch``, tells this layout from other dicts
  that store an ``epoch`` (pytorch/examples' ImageNet script saves ``epoch + 1`` under
  ``state_dict`` and no ``args``).
- DETR, DeiT and MAE load with ``torch.load(args.resume, map_location='cpu')``: since PyTorch 2.6
  (``weights_only=True`` by default) that stops at the pickled ``args`` before anything is
  restored; torchvision's own script passes ``weights_only=False``. None of them reads ``args``
  back. MAE saves no LR scheduler: it sets the rate from the epoch each iteration.
"""
from __future__ import annotations

from pathlib import Path

from ckptkit.core.checkpoint import Progress, ResumePrediction
from ckptkit.families.base import CounterValues, Family, Tree, whole_epochs_only
from ckptkit.storage.pickle_values import PickledObject
from ckptkit.views import sections as S

SYSTEM = "torchvision reference-style train.py"
HOW = "--resume"


def matches(tree: Tree) -> bool:
    args = S.config_fields(tree.get("args"))
    return ("model" in tree and "epoch" in tree and isinstance(args, dict)
            and S.as_int(args.get("start_epoch")) is not None)


def progress(tree: Tree, path: Path) -> Progress:
    p = Progress()
    epoch = S.as_int(tree.get("epoch"))
    if epoch is None or epoch < -1:
        p.notes.append("no 'epoch' a resume can use: --resume would restart at args.start_epoch")
        return p
    p.epochs_completed, p.epoch_complete = epoch + 1, True
    p.sources["epochs_completed"] = (f"key 'epoch' = {epoch}: the 0-based index of the last epoch trained (saved "
                                     "after training it; --resume sets args.start_epoch = epoch + 1)")
    return p


def record(tree: Tree, epochs: int, step: int) -> CounterValues:
    whole_epochs_only(step, "these scripts save at the end of each epoch and store no place inside one")
    return {("epoch",): epochs - 1}      # -1 for none: its resume then starts at args.start_epoch = 0


def resume(tree: Tree, path: Path, p: Progress) -> ResumePrediction:
    epoch = S.as_int(tree.get("epoch"))
    start = max(0, epoch + 1) if epoch is not None else 0
    restores: list[str] = [k for k in ("model", "optimizer", "lr_scheduler", "model_ema", "scaler") if k in tree]
    loses = []
    if isinstance(tree.get("args"), PickledObject):
        loses.append("everything, where the script loads with a plain torch.load(args.resume) (DETR, DeiT, MAE as "
                     "published): PyTorch 2.6 and later stop at the pickled args (argparse.Namespace) before anything "
                     "is restored; `ckptkit repair PATH --fix security.pickled-class` makes args a plain dict, which "
                     "loads (these scripts never read it back)")
    return ResumePrediction(SYSTEM, HOW, start_epoch=start + 1, start_batch=0, restores=restores, loses=loses)


VISION_REFS = Family(
    "vision-refs", "torchvision reference-style train.py .pth (model, optimizer, epoch = 0-based index of the last "
    "epoch trained, args with start_epoch: DETR, DeiT, MAE)",
    matches, progress, record, resume=resume, counter_keys=(("epoch",),), schedule_from_epoch=True,
)
