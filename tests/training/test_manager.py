from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ckptkit.core.errors import WriteVerificationError
from ckptkit.storage.crc import file_crc32
from ckptkit.storage.manifest import manifest_path, read_manifest
from ckptkit.training import CheckpointManager, list_checkpoints
from ckptkit.training import manager as manager_module

SEED_004_KEYS = {"model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "global_step", "epoch",
                 "best_val_loss", "config", "train_history", "val_history"}


def test_a_periodic_checkpoint_is_a_weights_only_dict_in_seed_004_layout_with_a_manifest(
        tmp_path: Path, make_state) -> None:
    state = make_state(step=20, val_loss=2.5)
    with CheckpointManager(tmp_path) as manager:
        paths = manager.save(state, ["periodic"])
    assert paths == [tmp_path / "checkpoint_step_20.pt"]
    ckpt = torch.load(paths[0], weights_only=True)
    assert SEED_004_KEYS | {"rng_state", "data_position", "ckptkit"} == set(ckpt)
    assert (ckpt["global_step"], ckpt["epoch"], ckpt["config"]) == (20, 4, {"name": "unit", "lr": 1e-2})
    assert ckpt["data_position"]["batch_in_epoch"] == 0 and ckpt["data_position"]["steps_per_epoch"] == 10
    assert ckpt["ckptkit"] == {"version": 1, "trainer": "unit", "kind": "periodic", "world_size": 1, "sharded": False}
    assert ckpt["rng_state"]["world_size"] == 1 and len(ckpt["rng_state"]["ranks"]) == 1
    manifest = read_manifest(paths[0])
    assert manifest.files[0].size == paths[0].stat().st_size
    assert manifest.files[0].crc32 == file_crc32(paths[0])
    assert (manifest.kind, manifest.global_step, manifest.metric["value"]) == ("periodic", 20, 2.5)


def test_the_file_holds_the_state_at_save_time_even_if_training_moves_on_at_once(tmp_path: Path, make_state) -> None:
    state = make_state(step=3)
    expected = {k: v.clone() for k, v in state.model.state_dict().items()}
    with CheckpointManager(tmp_path) as manager:
        manager.save(state, ["periodic"])
        with torch.no_grad():
            for p in state.model.parameters():
                p.add_(1.0)
        state.train_history.append({"step": 4, "loss": 9.9})
    saved = torch.load(tmp_path / "checkpoint_step_3.pt", weights_only=True)
    assert all(torch.equal(saved["model_state_dict"][k], v) for k, v in expected.items())
    assert saved["train_history"] == [{"step": 3, "loss": 1.5}]


def test_best_and_periodic_at_the_same_step_are_two_files_naming_their_kind(tmp_path: Path, make_state) -> None:
    with CheckpointManager(tmp_path) as manager:
        manager.save(make_state(step=10, val_loss=1.0), ["best", "periodic"])
    best = torch.load(tmp_path / "best_model.pt", weights_only=True)
    periodic = torch.load(tmp_path / "checkpoint_step_10.pt", weights_only=True)
    assert (best["ckptkit"]["kind"], periodic["ckptkit"]["kind"]) == ("best", "periodic")
    assert read_manifest(tmp_path / "best_model.pt").kind == "best"


def test_a_mid_window_checkpoint_keeps_the_accumulated_gradients_and_says_so_in_its_name(
        tmp_path: Path, make_state) -> None:
    state = make_state(step=7, micro_step=1)
    with CheckpointManager(tmp_path) as manager:
        (path,) = manager.save(state, ["interrupt"])
    assert path.name == "checkpoint_step_7_micro_1.pt"
    accumulation = torch.load(path, weights_only=True)["accumulation"]
    assert accumulation["micro_step"] == 1 and accumulation["loss_sum"] == 0.75
    assert torch.equal(accumulation["grads"]["0.weight"], state.model[0].weight.grad)


def test_an_enabled_grad_scaler_is_saved_and_a_missing_one_is_not(tmp_path: Path, make_state) -> None:
    with CheckpointManager(tmp_path) as manager:
        manager.save(make_state(step=1, scaler=True), ["periodic"])
        manager.save(make_state(step=2), ["periodic"])
    assert torch.load(tmp_path / "checkpoint_step_1.pt", weights_only=True)["scaler_state_dict"]["scale"] == 1024.0
    assert "scaler_state_dict" not in torch.load(tmp_path / "checkpoint_step_2.pt", weights_only=True)


def test_retention_keeps_the_last_two_and_the_best_by_validation_loss(tmp_path: Path, make_state) -> None:
    with CheckpointManager(tmp_path, keep_last=2) as manager:
        for step, loss in [(5, 3.0), (10, 1.0), (15, 2.0), (20, 2.5), (25, 2.2)]:
            manager.save(make_state(step=step, val_loss=loss), ["periodic"])
    assert [r.path.name for r in list_checkpoints(tmp_path)] == [
        "checkpoint_step_10.pt", "checkpoint_step_20.pt", "checkpoint_step_25.pt"
    ]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".json")) == [
        "checkpoint_step_10.pt", "checkpoint_step_20.pt", "checkpoint_step_25.pt"
    ]


def test_a_write_that_does_not_read_back_keeps_the_old_file_and_its_manifest(
        tmp_path: Path, make_state, monkeypatch) -> None:
    with CheckpointManager(tmp_path) as manager:
        manager.save(make_state(step=10, val_loss=1.0), ["best"])
    old_bytes = (tmp_path / "best_model.pt").read_bytes()
    old_manifest = manifest_path(tmp_path / "best_model.pt").read_text()
    monkeypatch.setattr(manager_module.torch, "save", lambda obj, f: f.write(b"PK\x03\x04 not a zip"))
    manager = CheckpointManager(tmp_path)
    manager.save(make_state(step=20, val_loss=0.5), ["best"])
    with pytest.raises(WriteVerificationError, match="does not load back with torch.load"):
        manager.close()
    assert (tmp_path / "best_model.pt").read_bytes() == old_bytes
    assert manifest_path(tmp_path / "best_model.pt").read_text() == old_manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.pt", "best_model.pt.manifest.json"]


def test_the_old_file_stays_confirmed_by_its_manifest_while_its_replacement_is_written(
        tmp_path: Path, make_state, monkeypatch) -> None:
    with CheckpointManager(tmp_path) as manager:
        manager.save(make_state(step=10, val_loss=1.0), ["best"])
    old_manifest = manifest_path(tmp_path / "best_model.pt").read_text()
    seen_while_writing = []
    real_save = manager_module.torch.save

    def save_and_look(obj, f):   # a crash here must leave best_model.pt confirmed
        seen_while_writing.append(manifest_path(tmp_path / "best_model.pt").read_text())
        real_save(obj, f)

    monkeypatch.setattr(manager_module.torch, "save", save_and_look)
    with CheckpointManager(tmp_path) as manager:
        manager.save(make_state(step=20, val_loss=0.5), ["best"])
    assert seen_while_writing == [old_manifest]
    assert read_manifest(tmp_path / "best_model.pt").global_step == 20


def test_a_failure_after_the_rename_leaves_the_new_file_unconfirmed_not_confirmed_by_the_old_manifest(
        tmp_path: Path, make_state, monkeypatch) -> None:
    from ckptkit.storage import atomic

    with CheckpointManager(tmp_path) as manager:
        manager.save(make_state(step=10, val_loss=1.0), ["best"])
    real_fsync_dir = atomic.fsync_dir

    def fail_after_rename(folder: Path) -> None:   # EIO fsyncing the directory, after os.replace
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic, "fsync_dir", fail_after_rename)
    manager = CheckpointManager(tmp_path)
    manager.save(make_state(step=20, val_loss=0.5), ["best"])
    with pytest.raises(OSError, match="Input/output error"):
        manager.close()
    monkeypatch.setattr(atomic, "fsync_dir", real_fsync_dir)
    assert torch.load(tmp_path / "best_model.pt", weights_only=True)["global_step"] == 20
    assert not manifest_path(tmp_path / "best_model.pt").exists()   # the step-10 manifest is not put back


def test_a_new_manager_removes_what_crashed_saves_left_and_nothing_else(tmp_path: Path, make_state) -> None:
    with CheckpointManager(tmp_path) as manager:
        manager.save(make_state(step=10), ["periodic"])
    kept = sorted(p.name for p in tmp_path.iterdir())
    (tmp_path / "checkpoint_step_20.pt.ckptkit-tmp-new-0123456789ab").write_bytes(b"PK half a save")
    (tmp_path / "best_model.ckptkit-tmp-new-ba9876543210").mkdir()
    (tmp_path / "best_model.ckptkit-tmp-new-ba9876543210" / "__0_0.distcp").write_bytes(b"shard")
    (tmp_path / "best_model.ckptkit-tmp-old-aaaaaaaaaaaa").mkdir()   # a complete old folder: recover_dir's
    (tmp_path / "notes.txt").write_text("mine")
    manager = CheckpointManager(tmp_path)
    manager.close()
    assert sorted(p.name for p in manager.removed_leftovers) == [
        "best_model.ckptkit-tmp-new-ba9876543210", "checkpoint_step_20.pt.ckptkit-tmp-new-0123456789ab"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*kept, "best_model.ckptkit-tmp-old-aaaaaaaaaaaa", "notes.txt"])


def test_a_failed_background_write_is_raised_by_the_next_save(tmp_path: Path, make_state, monkeypatch) -> None:
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(manager_module, "atomic_write_file", disk_full)
    manager = CheckpointManager(tmp_path)
    manager.save(make_state(step=1), ["periodic"])
    with pytest.raises(OSError, match="No space left on device"):
        manager.save(make_state(step=2), ["periodic"])
    manager.close()


def test_synchronous_saves_are_on_disk_when_save_returns(tmp_path: Path, make_state) -> None:
    manager = CheckpointManager(tmp_path, asynchronous=False)
    (path,) = manager.save(make_state(step=4), ["final"])
    assert path.name == "final_model.pt" and json.loads(manifest_path(path).read_text())["kind"] == "final"
    manager.close()


def test_keep_last_below_one_is_refused_because_the_newest_must_survive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep_last must be at least 1"):
        CheckpointManager(tmp_path, keep_last=0)
