"""timm's train.py (``last.pth.tar``, ``checkpoint-{E}.pth.tar``, ``model_best.pth.tar``,
``recovery-{E}-{U}.pth.tar``): huggingface/pytorch-image-models at aa4b585,
``timm/utils/checkpoint_saver.py``, ``timm/models/_helpers.py`` (``resume_checkpoint``),
``timm/task/_helpers.py`` (``resume_task_checkpoint``) and ``train.py``.

- ``CheckpointSaver._save(path, epoch)`` writes ``epoch``, ``arch``, ``optimizer``, ``version``
  = 2, ``state_dict`` (``state_dict_ema``, ``task_state``, ``args``, the AMP scaler's
  ``amp_scaler`` and ``metric`` when there are such).
- train.py calls ``save_checkpoint(epoch, metric)`` once the 0-based epoch ``epoch`` is trained
  and evaluated: ``last``, ``checkpoint-{E}`` (the best ``--checkpoint-hist`` by metric) and
  ``model_best`` hold ``epoch`` = E, so E + 1 epochs are done.
- ``save_recovery(epoch, batch_idx=update_idx)`` every ``--recovery-interval`` optimizer updates
  inside epoch E writes ``recovery-{E}-{update_idx}.pth.tar`` with the same ``epoch`` = E: E
  epochs and update_idx + 1 updates of the next are done, which only the file name records.
- ``resume_checkpoint`` returns ``epoch + 1`` when ``version > 1`` (``epoch`` itself before
  version 2, which incremented it before saving) and train.py loops ``range(start_epoch,
  num_epochs)``: a recovery file resumes at the next epoch, and the rest of its epoch is never
  trained. The resumed run makes a new ``CheckpointSaver``: its best metric starts over.
- Both write into ``tmp.pth.tar`` / ``recovery_tmp.pth.tar`` first, then ``os.replace`` it.
- Loaded with ``weights_only=True`` and ``argparse.Namespace`` allowed (the pickled ``args``).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ckptkit.core.checkpoint import Progress, ResumePrediction, Severity, ordinal
from ckptkit.families.base import (
    CounterValues,
    Family,
    FamilyNames,
    TrapHit,
    Tree,
    whole_epochs_only,
)
from ckptkit.views import sections as S

SYSTEM = "timm train.py"
HOW = "--resume"
RECOVERY = re.compile(r"^recovery-(?P<epoch>\d+)-(?P<update>\d+)\.pth\.tar$")
TEMPORARY = re.compile(r"^(?P<recovery>recovery_)?tmp\.pth\.tar$")


def matches(tree: Tree) -> bool:
    return "arch" in tree and "epoch" in tree and S.as_int(tree.get("version")) is not None


def _counts_before_saving(tree: Tree) -> bool:
    """Version 1 stored the epoch already incremented (epochs done); version 2 the 0-based index."""
    version = S.as_int(tree.get("version"))
    return version is not None and version < 2


def _recovery(tree: Tree, path: Path) -> tuple[int, int] | None:
    """(epoch index, updates done in it) of a recovery file whose name and 'epoch' agree."""
    m = RECOVERY.match(path.name)
    epoch = S.as_int(tree.get("epoch"))
    if m is None or epoch is None or int(m["epoch"]) != epoch or _counts_before_saving(tree):
        return None
    return epoch, int(m["update"]) + 1


def progress(tree: Tree, path: Path) -> Progress:
    p = Progress()
    epoch = S.as_int(tree.get("epoch"))
    recovery = _recovery(tree, path)
    if epoch is None or epoch < (0 if _counts_before_saving(tree) else -1):
        p.notes.append("no 'epoch' a resume can use: timm's --resume would restart at the first epoch")
    elif recovery is not None:
        p.epochs_completed, p.epoch_complete, p.step_in_epoch = epoch, False, recovery[1]
        p.sources["epochs_completed"] = f"key 'epoch' = {epoch}: the 0-based epoch this recovery file was saved in"
        p.sources["step_in_epoch"] = (f"file name {path.name}: saved after update index {recovery[1] - 1}, "
                                      f"{recovery[1]} optimizer updates of that epoch")
    elif _counts_before_saving(tree):
        p.epochs_completed, p.epoch_complete = epoch, True
        p.sources["epochs_completed"] = f"key 'epoch' = {epoch} with version < 2: epochs finished"
    else:
        p.epochs_completed, p.epoch_complete = epoch + 1, True
        p.sources["epochs_completed"] = (f"key 'epoch' = {epoch}: the 0-based index of the last epoch trained "
                                         "(version 2 saves after each epoch and resumes at epoch + 1)")
    return p


def record(tree: Tree, epochs: int, step: int) -> CounterValues:
    whole_epochs_only(step, "timm stores the epoch only; a recovery file's place inside an epoch is in its name, "
                            "and its resume starts the next epoch anyway")
    # Version 2: the index of the last epoch trained; -1 for none, which its resume starts at 0 (-1 + 1).
    return {("epoch",): epochs if _counts_before_saving(tree) else epochs - 1}


def resume(tree: Tree, path: Path, p: Progress) -> ResumePrediction:
    epoch = S.as_int(tree.get("epoch"))
    start = max(0, 0 if epoch is None else epoch if _counts_before_saving(tree) else epoch + 1)
    loses = ["the best metric so far: the resumed run's first saved epoch becomes model_best.pth.tar, "
             "better or not, when it saves into the same --experiment folder"]
    recovery = _recovery(tree, path)
    if recovery is not None:
        loses.insert(0, f"the rest of the {ordinal_epoch(recovery[0])} epoch after its first {recovery[1]} "
                        "updates is never trained (a recovery file resumes at the next epoch)")
    restores: list[str] = [k for k in ("state_dict", "optimizer", "amp_scaler", "state_dict_ema", "task_state")
                           if k in tree]
    return ResumePrediction(SYSTEM, HOW, start_epoch=start + 1, start_batch=0, restores=restores, loses=loses)


def ordinal_epoch(index: int) -> str:
    """The 0-based epoch `index` in words, "3rd" for 2."""
    return ordinal(index + 1)


def traps(tree: Tree, path: Path, p: Progress) -> Iterator[TrapHit]:
    recovery = _recovery(tree, path)
    if recovery is not None:
        yield TrapHit(
            "counters.resume-skips-rest-of-epoch", Severity.WARNING, "epoch",
            f"a recovery file saved inside the {ordinal_epoch(recovery[0])} epoch after {recovery[1]} optimizer "
            f"updates: timm's --resume returns 'epoch' + 1 = {recovery[0] + 1} and train.py starts there, so the "
            f"rest of the {ordinal_epoch(recovery[0])} epoch is never trained (the LR schedule jumps to the next "
            "epoch too). Resuming from last.pth.tar (saved at the end of the epoch before) trains that whole "
            "epoch again instead")


TIMM = Family(
    "timm", "timm train.py .pth.tar (epoch = 0-based index of the last epoch trained, arch, version 2)",
    matches, progress, record,
    names=FamilyNames(recent=("last.pth.tar",), best=("model_best.pth.tar",), temporary=TEMPORARY, between=RECOVERY,
                      copy_of=lambda m: "a recovery-E-U.pth.tar" if m["recovery"] else "last.pth.tar"),
    resume=resume, traps=traps, counter_keys=(("epoch",), ("version",)),
    safe_globals=("argparse.Namespace",), schedule_from_epoch=True,
)
