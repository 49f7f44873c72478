"""Checkpoint layouts: run_experiment.py's is the default; the fashion recommender's names, keys,
metric and resume needs; EnStack's folders."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from ckptkit.core.errors import ResumeRefusedError, WriteVerificationError
from ckptkit.storage.manifest import read_manifest
from ckptkit.training import (
    EXPERIMENT,
    PRETRAINED,
    RETRIEVAL,
    CheckpointManager,
    layout_of,
    list_checkpoints,
    load_for_resume,
    verify_for_resume,
)


def _retrieval_state(make_state, *, step: int, recall: float | None, micro_step: int = 0):
    state = make_state(step=step, micro_step=micro_step)
    recalls = [] if recall is None else [recall]
    return dataclasses.replace(state, trainer="retrieval", family_fields={
        "loss": 1.25, "recall_at_10": recall, "train_losses": [1.25], "val_recalls": recalls, "epoch_loss_sum": 0.5,
    })


def test_seed_004_is_the_default_layout_and_a_checkpoint_without_a_layout_name_is_read_as_it() -> None:
    assert CheckpointManager.__init__.__kwdefaults__["layout"] is EXPERIMENT
    assert layout_of({"ckptkit": {"version": 1, "trainer": "lm"}}) is EXPERIMENT
    assert layout_of({"ckptkit": {"layout": "retrieval"}}) is RETRIEVAL
    assert EXPERIMENT.owns_name("checkpoint_step_12_micro_1.pt") and EXPERIMENT.owns_name("best_model.pt")
    assert not EXPERIMENT.owns_name("optimized_model_epoch_1_recall_0.5000.pt")
    assert RETRIEVAL.owns_name("optimized_model_epoch_1_recall_0.5000.pt")
    assert RETRIEVAL.owns_name("interrupted_model_epoch_3_batch_7.pt") and not RETRIEVAL.owns_name("best_model.pt")


def test_a_retrieval_save_uses_seed_001_names_and_keys_and_records_recall_as_a_max_metric(
        tmp_path: Path, make_state) -> None:
    state = _retrieval_state(make_state, step=10, recall=0.41234)  # position (2, 0): two epochs done
    with CheckpointManager(tmp_path, layout=RETRIEVAL) as manager:
        paths = manager.save(state, ["best", "periodic"])
    assert [p.name for p in paths] == ["best_optimized_model_recall_0.4123.pt",
                                       "optimized_model_epoch_2_recall_0.4123.pt"]
    ckpt = torch.load(paths[1], weights_only=True)
    assert (ckpt["epoch"], ckpt["loss"], ckpt["recall_at_10"], ckpt["global_step"]) == (2, 1.25, 0.41234, 10)
    assert "epoch_loss_sum" not in ckpt and "best_val_loss" not in ckpt and "train_history" not in ckpt
    assert ckpt["ckptkit"]["layout"] == "retrieval" and ckpt["ckptkit"]["kind"] == "periodic"
    assert read_manifest(paths[1]).metric == {"name": "recall_at_10", "value": 0.41234, "mode": "max"}


def test_an_interrupt_inside_an_epoch_is_named_by_its_batch_and_keeps_the_epoch_loss_so_far(
        tmp_path: Path, make_state) -> None:
    state = _retrieval_state(make_state, step=6, recall=None, micro_step=1)  # batch 13: epoch 1, batch 3
    with CheckpointManager(tmp_path, layout=RETRIEVAL) as manager:
        [path] = manager.save(state, ["interrupt"])
        with pytest.raises(ValueError, match="taken at an epoch's end"):
            manager.save(state, ["periodic"])
    assert path.name == "interrupted_model_epoch_1_batch_3.pt"
    ckpt = torch.load(path, weights_only=True)
    assert (ckpt["epoch"], ckpt["recall_at_10"], ckpt["epoch_loss_sum"]) == (1, None, 0.5)
    assert ckpt["accumulation"]["micro_step"] == 1


def test_retention_removes_superseded_best_files_whose_names_carry_the_metric(tmp_path: Path, make_state) -> None:
    with CheckpointManager(tmp_path, layout=RETRIEVAL, keep_last=2) as manager:
        for step, recall in [(5, 0.1), (10, 0.3), (15, 0.2), (20, 0.4)]:
            kinds = ["best", "periodic"] if recall in (0.1, 0.3, 0.4) else ["periodic"]
            manager.save(_retrieval_state(make_state, step=step, recall=recall), kinds)
    # the last two epochs; the best by recall is epoch 4, so epoch 2 (0.3) goes; best files 0.1, 0.3 too
    assert [r.path.name for r in list_checkpoints(tmp_path)] == [
        "optimized_model_epoch_3_recall_0.2000.pt", "best_optimized_model_recall_0.4000.pt",
        "optimized_model_epoch_4_recall_0.4000.pt",
    ]
    assert sorted(p.name for p in tmp_path.glob("best_*.pt")) == ["best_optimized_model_recall_0.4000.pt"]


def test_a_resume_requires_the_layouts_own_keys(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "optimized_model_epoch_1_recall_0.5000.pt"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                "recall_at_10": 0.5, "ckptkit": {"version": 1, "trainer": "retrieval", "layout": "retrieval"}}, path)
    with pytest.raises(ResumeRefusedError, match="missing epoch; a resume needs them"):
        verify_for_resume(path)


def _recsys_state(make_state, *, step: int, accuracy: float | None, micro_step: int = 0):
    state = make_state(step=step, micro_step=micro_step)
    return dataclasses.replace(state, trainer="recsys", family_fields={
        "accuracy": accuracy, "best_acc": accuracy, "epoch_loss_sum": 0.5,
    })


def test_a_recsys_save_uses_llamarec_names_with_epoch_as_the_epochs_finished_and_accuracy_as_a_max_metric(
    tmp_path: Path, make_state
) -> None:
    from ckptkit.training import RECSYS

    state = _recsys_state(make_state, step=10, accuracy=0.375)  # position (2, 0): two epochs done
    with CheckpointManager(tmp_path, layout=RECSYS, keep_last=None) as manager:
        paths = manager.save(state, ["best", "periodic", "final"])
    assert [p.name for p in paths] == ["best_acc_model.pth", "checkpoint-recent.pth", "checkpoint-recent.pth.final"]
    ckpt = torch.load(paths[1], weights_only=True)
    assert (ckpt["epoch"], ckpt["accuracy"], ckpt["best_acc"], ckpt["global_step"]) == (2, 0.375, 0.375, 10)
    assert "epoch_loss_sum" not in ckpt and ckpt["ckptkit"]["layout"] == "recsys"
    assert layout_of(ckpt) is RECSYS and RECSYS.required_keys == ("model_state_dict", "optimizer_state_dict", "epoch")
    assert read_manifest(paths[0]).metric == {"name": "accuracy", "value": 0.375, "mode": "max"}
    assert RECSYS.owns_name("checkpoint-recent.pth.final") and not RECSYS.owns_name("best_model.pt")


def test_a_recsys_interrupt_overwrites_the_recent_checkpoint_and_keeps_epoch_at_the_epochs_finished(
    tmp_path: Path, make_state
) -> None:
    from ckptkit.training import RECSYS

    state = _recsys_state(make_state, step=6, accuracy=None, micro_step=1)  # batch 13: epoch 1, batch 3
    with CheckpointManager(tmp_path, layout=RECSYS, keep_last=None) as manager:
        [path] = manager.save(state, ["interrupt"])
        with pytest.raises(ValueError, match="taken at an epoch's end"):
            manager.save(state, ["periodic"])
    assert path.name == "checkpoint-recent.pth"
    ckpt = torch.load(path, weights_only=True)
    assert (ckpt["epoch"], ckpt["data_position"]["epoch"], ckpt["epoch_loss_sum"]) == (1, 1, 0.5)


def _classifier_state(make_state, *, step: int, f1: float | None, micro_step: int = 0):
    state = make_state(step=step, micro_step=micro_step)
    return dataclasses.replace(state, trainer="pretrained", family_fields={
        "best_val_f1": 0.5, "best_val_acc": 0.75, "val_f1": f1, "model_config": {"num_labels": 2},
    })


def test_a_training_state_save_writes_a_save_pretrained_folder_with_seed_003s_counters(
        tmp_path: Path, make_state) -> None:
    state = _classifier_state(make_state, step=6, f1=None, micro_step=1)  # batch 13: epoch 2 (1-based), 3 batches in
    with CheckpointManager(tmp_path, layout=PRETRAINED) as manager:
        [path] = manager.save(state, ["interrupt"])
    assert path.name == "last_checkpoint"
    assert PRETRAINED.owns_name("best_model") and not PRETRAINED.owns_name("best_model.pt")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "training_state.pth"]
    ckpt = torch.load(path / "training_state.pth", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["total_batches"], ckpt["global_step"]) == (2, 3, 10, 6)
    assert "model_state_dict" not in ckpt and "model_config" not in ckpt and ckpt["accumulation"]["micro_step"] == 1
    assert layout_of(ckpt) is PRETRAINED and (path / "config.json").read_text() == '{\n  "num_labels": 2\n}\n'
    point = load_for_resume(tmp_path)
    assert point.path == path
    assert sorted(point.checkpoint["model_state_dict"]) == ["0.bias", "0.weight", "2.bias", "2.weight"]


def test_a_folder_that_does_not_read_back_leaves_the_old_folder_and_its_manifest(
        tmp_path: Path, make_state, monkeypatch) -> None:
    from ckptkit.training import pretrained_layout

    with CheckpointManager(tmp_path, layout=PRETRAINED, asynchronous=False) as manager:
        manager.save(_classifier_state(make_state, step=5, f1=0.5), ["periodic"])
        before = {p.name: p.read_bytes() for p in (tmp_path / "last_checkpoint").iterdir()}
        monkeypatch.setattr(pretrained_layout, "load_file", lambda path: {})   # reads back no tensors
        with pytest.raises(WriteVerificationError, match="the old folder was kept"):
            manager.save(_classifier_state(make_state, step=10, f1=0.6), ["periodic"])
            manager.wait()
    assert {p.name: p.read_bytes() for p in (tmp_path / "last_checkpoint").iterdir()} == before
    assert read_manifest(tmp_path / "last_checkpoint").global_step == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "last_checkpoint.manifest.json"]
