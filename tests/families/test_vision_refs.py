"""torchvision reference-style scripts (torchvision's references, DETR, DeiT, MAE): each saves
'epoch' = the 0-based index of the epoch just trained, with the run's argparse args, and resumes
at args.start_epoch = checkpoint['epoch'] + 1. The dicts below are built as each script builds
them (its save call's keys, a real argparse.Namespace from a parser with its --start-epoch flag)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import torch

from ckptkit.formats import open_checkpoint
from ckptkit.repair import repair_checkpoint
from ckptkit.repair.epoch import fix_epoch
from ckptkit.validating import validate_path
from tests.validation.helpers import codes, loads_weights_only, only


def _args(epochs: int = 10) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--start_epoch", default=0, type=int)     # DETR, DeiT, MAE; torchvision: --start-epoch
    parser.add_argument("--epochs", default=epochs, type=int)
    parser.add_argument("--output_dir", default="out")
    return parser.parse_args([])


def _trained(epoch: int) -> dict[str, Any]:
    """The state after the loop body of epoch index `epoch`: trained, scheduler stepped."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3)
    for _ in range(epoch + 1):
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
            "model_ema": model.state_dict(), "scaler": {"scale": 1024.0, "growth_tracker": 0}}


LAYOUTS = {   # each script's save call, in its order of keys
    "torchvision": ("model", "optimizer", "lr_scheduler", "epoch", "args", "model_ema"),
    "detr": ("model", "optimizer", "lr_scheduler", "epoch", "args"),
    "deit": ("model", "optimizer", "lr_scheduler", "epoch", "model_ema", "scaler", "args"),
    "mae": ("model", "optimizer", "epoch", "scaler", "args"),
}


def _save(path: Path, layout: str, epoch: int) -> Path:
    state = {**_trained(epoch), "epoch": epoch, "args": _args()}
    torch.save({k: state[k] for k in LAYOUTS[layout]}, path)
    return path


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_epoch_4_is_five_epochs_trained_and_its_resume_starts_the_6th(tmp_path: Path, layout: str) -> None:
    path = _save(tmp_path / "checkpoint.pth", layout, epoch=4)
    ckpt = open_checkpoint(path)
    assert ckpt.family == "vision-refs"
    assert (ckpt.progress.epochs_completed, ckpt.progress.epoch_complete) == (5, True)
    resume = ckpt.progress.resume
    # args.start_epoch = checkpoint['epoch'] + 1 = 5, the 0-based index of the 6th epoch
    assert resume is not None and (resume.start_epoch, resume.start_batch) == (6, 0)
    assert set(resume.restores) == set(LAYOUTS[layout]) - {"epoch", "args"}
    assert "PyTorch 2.6 and later stop at the pickled args" in resume.loses[0]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_validate_keeps_the_pickled_args_warning_and_says_nothing_false_about_the_schedule(
        tmp_path: Path, layout: str) -> None:
    path = _save(tmp_path / "checkpoint.pth", layout, epoch=4)
    report = validate_path(path)
    assert not loads_weights_only(path)       # what DETR's torch.load(args.resume) meets since PyTorch 2.6
    assert "argparse.Namespace" in only(report, "security.pickled-class").message
    # MAE saves no scheduler and needs none (it sets the rate from the epoch); the others save theirs,
    # stepped once per epoch trained: its last_epoch (5) agrees with 5 epochs done.
    assert not {"completeness.missing-scheduler", "counters.scheduler-position"} & codes(report)


def test_after_the_args_repair_the_file_loads_and_reads_the_same(tmp_path: Path) -> None:
    path = _save(tmp_path / "checkpoint.pth", "detr", epoch=4)
    repair_checkpoint(path, ["security.pickled-class"], keep_backup=False)
    assert loads_weights_only(path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 4 and loaded["args"]["start_epoch"] == 0
    ckpt = open_checkpoint(path)
    assert (ckpt.family, ckpt.progress.epochs_completed) == ("vision-refs", 5)
    resume = ckpt.progress.resume
    assert resume is not None and resume.start_epoch == 6 and resume.loses == []


def test_fix_epoch_writes_the_index_its_resume_adds_one_to(tmp_path: Path) -> None:
    path = _save(tmp_path / "checkpoint.pth", "mae", epoch=4)
    fix_epoch(path, 3, keep_backup=False)
    with torch.serialization.safe_globals([argparse.Namespace]):
        assert torch.load(path, weights_only=True)["epoch"] == 2      # args.start_epoch = 3: the 4th epoch
    assert open_checkpoint(path).progress.epochs_completed == 3


@pytest.mark.parametrize("tree, done", [
    # pytorch/examples' ImageNet script: 'epoch': epoch + 1 under 'state_dict', no args: epochs finished
    ({"epoch": 5, "arch": "resnet18", "state_dict": {"w": torch.ones(2)}, "best_acc1": 0.5}, 5),
    # an args without the --start-epoch flag is not this lineage's
    ({"epoch": 5, "model": {"w": torch.ones(2)}, "optimizer": {}, "args": argparse.Namespace(lr=0.1)}, 5),
])
def test_other_dicts_with_an_epoch_keep_the_generic_reading(tmp_path: Path, tree: dict[str, Any], done: int) -> None:
    torch.save(tree, tmp_path / "ckpt.pth")
    ckpt = open_checkpoint(tmp_path / "ckpt.pth")
    assert (ckpt.family, ckpt.progress.epochs_completed) == ("generic", done)
