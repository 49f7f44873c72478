"""Ultralytics YOLO checkpoints, built as its trainer builds them (ultralytics/engine/trainer.py
save_model, and utils/torch_utils.py strip_optimizer at the end of training). The model is pickled
whole, as an instance of ultralytics.nn.tasks.DetectionModel: a stand-in class registered under
that name writes the same pickle (GLOBAL 'ultralytics.nn.tasks DetectionModel'); ultralytics
itself is not installed here."""
from __future__ import annotations

import copy
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from ckptkit.cli import main as cli
from ckptkit.formats import open_checkpoint
from ckptkit.repair.epoch import fix_epoch
from ckptkit.runs import pick_resume, scan_run
from ckptkit.validating import validate_path
from tests.validation.helpers import codes


class DetectionModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
        self.names = {0: "cat", 1: "dog"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@pytest.fixture
def yolo_names() -> Iterator[None]:
    """ultralytics.nn.tasks.DetectionModel importable while the test saves (only the pickle needs it)."""
    modules = {name: types.ModuleType(name) for name in ("ultralytics", "ultralytics.nn", "ultralytics.nn.tasks")}
    modules["ultralytics.nn.tasks"].DetectionModel = DetectionModel    # type: ignore[attr-defined]
    DetectionModel.__module__, DetectionModel.__qualname__ = "ultralytics.nn.tasks", "DetectionModel"
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    yield
    for name, module in saved.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module


def _trained(epochs_run: int) -> tuple[DetectionModel, dict[str, Any]]:
    torch.manual_seed(0)
    model = DetectionModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True)
    for _ in range(epochs_run):
        model(torch.randn(1, 3, 8, 8)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer.state_dict()


def _save_model(path: Path, epoch: int, planned: int = 100, updates_per_epoch: int = 8) -> None:
    """BaseTrainer.save_model at the end of the 0-based epoch `epoch`."""
    model, optimizer = _trained(epoch + 1)
    results = {"epoch": list(range(1, epoch + 2)), "metrics/mAP50(B)": [0.1] * (epoch + 1)}
    torch.save({
        "epoch": epoch, "best_fitness": 0.31, "model": None, "ema": copy.deepcopy(model).half(),
        "updates": (epoch + 1) * updates_per_epoch, "optimizer": optimizer, "scaler": {"scale": 65536.0},
        "train_args": {"task": "detect", "model": "yolo11n.yaml", "data": "coco8.yaml", "epochs": planned},
        "train_metrics": {"fitness": 0.31}, "train_results": results, "date": "2026-12-02T12:00:00+00:00",
        "version": "8.3.200", "license": "AGPL-3.0 (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com"}, path)


def _strip_optimizer(path: Path) -> None:
    """strip_optimizer at the end of training: the model kept from the EMA, the training state dropped."""
    with torch.serialization.safe_globals([DetectionModel]):
        x = torch.load(path, weights_only=False)
    x["model"] = x["ema"]
    for key in ("optimizer", "best_fitness", "ema", "updates", "scaler"):
        x[key] = None
    x["epoch"] = -1
    torch.save(x, path)


def test_a_mid_training_last_pt_is_epoch_plus_one_done_and_its_model_is_the_ema(
        tmp_path: Path, yolo_names: None) -> None:
    _save_model(tmp_path / "last.pt", epoch=4)
    ckpt = open_checkpoint(tmp_path / "last.pt")
    assert ckpt.family == "ultralytics"
    assert (ckpt.progress.epochs_completed, ckpt.progress.global_step) == (5, 40)
    assert ckpt.sources["model"] == "ema" and len(ckpt.model) == 9
    assert ckpt.model["model.0.weight"].dtype.name == "float16"      # save_model stores the EMA in half precision
    resume = ckpt.progress.resume
    # resume_training: start_epoch = epoch + 1 = 5, the 0-based index of the 6th epoch
    assert resume is not None and (resume.start_epoch, resume.refuses) == (6, None)
    report = validate_path(tmp_path / "last.pt")
    # The model is found, and no scheduler is saved on purpose (the rate is set from the epoch).
    assert not {"completeness.missing-model", "completeness.missing-scheduler"} & codes(report)
    assert "security.pickled-class" in codes(report)      # a whole pickled model: weights_only=True refuses it


def test_a_finished_run_is_stripped_and_its_resume_refuses_it(tmp_path: Path, yolo_names: None) -> None:
    _save_model(tmp_path / "last.pt", epoch=99)
    _strip_optimizer(tmp_path / "last.pt")
    progress = open_checkpoint(tmp_path / "last.pt").progress
    assert (progress.training_finished, progress.epochs_completed) == (True, 100)
    assert progress.resume is not None and progress.resume.refuses is not None
    assert "training to 100 epochs is finished, nothing to resume" in progress.resume.refuses
    # strip_optimizer dropped the optimizer on purpose: information, not a missing-optimizer warning.
    report = validate_path(tmp_path / "last.pt")
    assert "completeness.missing-optimizer" not in codes(report)
    weights_only = next(f for f in report.findings if f.code == "completeness.weights-only")
    assert weights_only.severity.value == "info"
    assert "training it further starts a fresh optimizer" in weights_only.message


def test_latest_takes_the_newest_epoch_and_says_so_when_the_run_finished(tmp_path: Path, yolo_names: None) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    _save_model(weights / "best.pt", epoch=3)
    _save_model(weights / "last.pt", epoch=4)
    picked = pick_resume(scan_run(tmp_path).entries)
    assert picked is not None and picked.path.name == "last.pt"
    for name in ("last.pt", "best.pt"):       # final_eval strips both at the end of training
        _strip_optimizer(weights / name)
    result = CliRunner().invoke(cli, ["latest", str(tmp_path)])
    assert result.exit_code != 0
    assert "2 that Ultralytics YOLO does not resume from" in result.output


def test_fix_epoch_writes_the_index_its_resume_adds_one_to(tmp_path: Path, yolo_names: None) -> None:
    _save_model(tmp_path / "last.pt", epoch=4)
    fix_epoch(tmp_path / "last.pt", 3, keep_backup=False)
    with torch.serialization.safe_globals([DetectionModel]):
        assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 2
    assert open_checkpoint(tmp_path / "last.pt").progress.epochs_completed == 3


def _save_yolov5(path: Path, epoch: int, planned: int = 300) -> None:
    """YOLOv5's train.py at the end of the 0-based epoch `epoch`: the training model and its EMA."""
    model, optimizer = _trained(epoch + 1)
    torch.save({"epoch": epoch, "best_fitness": 0.2, "model": copy.deepcopy(model).half(),
                "ema": copy.deepcopy(model).half(), "updates": (epoch + 1) * 8, "optimizer": optimizer,
                "opt": {"weights": "yolov5s.pt", "epochs": planned, "batch_size": 16},
                "git": {"remote": None}, "date": "2026-12-02T12:00:00"}, path)


def test_a_yolov5_last_pt_resumes_at_epoch_plus_one_from_its_training_model(tmp_path: Path, yolo_names: None) -> None:
    _save_yolov5(tmp_path / "last.pt", epoch=9)
    ckpt = open_checkpoint(tmp_path / "last.pt")
    assert (ckpt.family, ckpt.sources["model"], ckpt.progress.epochs_completed) == ("ultralytics", "model", 10)
    resume = ckpt.progress.resume
    assert resume is not None and resume.refuses is None
    assert (resume.system, resume.how, resume.start_epoch) == ("YOLOv5 train.py", "--resume", 11)


def test_yolov5_fine_tunes_past_its_planned_epochs_but_refuses_a_stripped_file(
        tmp_path: Path, yolo_names: None) -> None:
    _save_yolov5(tmp_path / "last.pt", epoch=299)      # smart_resume: "has been trained for 299 epochs. Fine-tuning"
    resume = open_checkpoint(tmp_path / "last.pt").progress.resume
    assert resume is not None and resume.refuses is None and resume.start_epoch == 301
    _strip_optimizer(tmp_path / "last.pt")
    resume = open_checkpoint(tmp_path / "last.pt").progress.resume
    assert resume is not None and "nothing to resume" in (resume.refuses or "")
