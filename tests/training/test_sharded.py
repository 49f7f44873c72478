"""Sharded (torch.distributed.checkpoint) saves through the CheckpointManager, on a one-rank
gloo group: asynchronous and synchronous writes, one save under several names, failures."""
from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from ckptkit.core.checkpoint import Severity
from ckptkit.core.errors import ResumeRefusedError
from ckptkit.formats import open_checkpoint
from ckptkit.runs import resuming
from ckptkit.runs.trainer_registry import TrainerEntry
from ckptkit.storage.manifest import manifest_path, read_manifest
from ckptkit.training import CheckpointManager, TrainingState, load_for_resume
from ckptkit.training import sharded as sharded_module
from ckptkit.training.layout import TRAINING_STATE_FILE
from ckptkit.validating import validate_path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.usefixtures("one_rank_group")
def test_an_asynchronous_save_that_is_best_and_periodic_writes_the_shards_once_and_both_folders_resume(
        tmp_path: Path, make_state: Callable[..., TrainingState]) -> None:
    run = tmp_path / "run"
    state = make_state(step=4, val_loss=1.25)
    with CheckpointManager(run, sharded=True, asynchronous=True) as manager:
        paths = manager.save(state, ["best", "periodic"])
    assert [p.name for p in paths] == ["best_model", "checkpoint_step_4"]
    best, periodic = paths
    shard_names = sorted(p.name for p in best.iterdir() if p.name != TRAINING_STATE_FILE)
    assert ".metadata" in shard_names and any(n.endswith(".distcp") for n in shard_names)
    for name in shard_names:   # hard links: the bytes were written once
        assert os.stat(best / name).st_ino == os.stat(periodic / name).st_ino
    kinds = [torch.load(p / TRAINING_STATE_FILE, weights_only=True)["ckptkit"]["kind"] for p in paths]
    assert kinds == ["best", "periodic"]
    for path in paths:
        manifest = read_manifest(path)
        assert manifest is not None and manifest.global_step == 4
        assert [f for f in validate_path(path).findings if f.severity is Severity.ERROR] == []
    assert not [p for p in run.iterdir() if ".ckptkit-tmp-" in p.name]

    fresh = make_state(step=0)
    for param in fresh.model.parameters():
        torch.nn.init.zeros_(param)
    progress = load_for_resume(run).restore(fresh.model, fresh.optimizer)
    assert progress.global_step == 4
    for mine, saved in zip(fresh.model.parameters(), state.model.parameters(), strict=True):
        assert torch.equal(mine, saved)


@pytest.mark.usefixtures("one_rank_group")
def test_asynchronous_and_synchronous_sharded_saves_write_the_same_bytes(
        tmp_path: Path, make_state: Callable[..., TrainingState]) -> None:
    written = {}
    for asynchronous in (True, False):
        run = tmp_path / f"async-{asynchronous}"
        with CheckpointManager(run, sharded=True, asynchronous=asynchronous) as manager:
            manager.save(make_state(step=6), ["periodic"])
        written[asynchronous] = _files(run / "checkpoint_step_6")
    # .metadata holds a random save id; what it describes is compared through DCP's reader.
    for files in written.values():
        del files[".metadata"]
    assert written[True] == written[False] and len(written[True]) == 2
    readers = [FileSystemReader(str(tmp_path / f"async-{a}" / "checkpoint_step_6")) for a in (True, False)]
    described = [r.read_metadata().state_dict_metadata for r in readers]
    assert described[0] == described[1] and "model.0.weight" in described[0]


@pytest.mark.usefixtures("one_rank_group")
def test_a_failed_shard_write_keeps_the_old_folder_and_its_manifest_and_leaves_no_temporary_folder(
        tmp_path: Path, make_state: Callable[..., TrainingState], monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    with CheckpointManager(run, sharded=True, asynchronous=True) as manager:
        manager.save(make_state(step=4), ["periodic"])
        manager.wait()
        folder = run / "checkpoint_step_4"
        before, manifest_before = _files(folder), manifest_path(folder).read_bytes()

        def failing_async_save(*args: object, **kwargs: object) -> Future:
            failed: Future = Future()
            failed.set_exception(OSError(28, "No space left on device"))
            return failed

        monkeypatch.setattr(sharded_module.dcp, "async_save", failing_async_save)
        manager.save(make_state(step=4), ["periodic"])
        with pytest.raises(OSError, match="No space left"):
            manager.wait()
    assert _files(folder) == before
    assert manifest_path(folder).read_bytes() == manifest_before
    assert not [p for p in run.iterdir() if ".ckptkit-tmp-" in p.name]


@pytest.mark.usefixtures("one_rank_group")
def test_ckptkit_reads_its_sharded_folder_with_the_training_state_beside_the_shards(
        tmp_path: Path, make_state: Callable[..., TrainingState], monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    with CheckpointManager(run, sharded=True) as manager:
        manager.save(make_state(step=4), ["periodic"])
    ckpt = open_checkpoint(run / "checkpoint_step_4")
    assert ckpt.format == "dcp" and ckpt.progress.global_step == 4
    assert ckpt.progress.sources["global_step"].startswith("ckptkit_training_state.pt ")
    assert ckpt.scheduler is not None and ckpt.sources["scheduler"].startswith("ckptkit_training_state.pt")
    assert ckpt.extra["ckptkit"]["trainer"] == "unit" and ckpt.extra["ckptkit"]["sharded"] is True
    assert sorted(ckpt.model) == ["0.bias", "0.weight", "2.bias", "2.weight"]   # from the shards
    # `ckptkit resume` runs such a folder's trainer under torchrun, one process per rank, with --fsdp
    monkeypatch.setattr(
        resuming, "find_trainer", lambda name: TrainerEntry(name, "trainers.unit") if name == "unit" else None
    )
    plan = resuming.plan_resume(run, ("--log-interval", "1"))
    assert plan.checkpoint == run / "checkpoint_step_4"
    assert plan.command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m",
                                "trainers.unit", "--resume", str(run / "checkpoint_step_4"), "--fsdp",
                                "--log-interval", "1"]


@pytest.mark.usefixtures("one_rank_group")
def test_a_damaged_training_state_member_is_named_and_the_folder_is_not_resumed(
        tmp_path: Path, make_state: Callable[..., TrainingState]) -> None:
    run = tmp_path / "run"
    with CheckpointManager(run, sharded=True) as manager:
        manager.save(make_state(step=4), ["periodic"])
    folder = run / "checkpoint_step_4"
    os.truncate(folder / TRAINING_STATE_FILE, 1000)
    errors = [(f.code, f.where) for f in validate_path(folder).findings if f.severity is Severity.ERROR]
    assert ("folder.unreadable-member", f"checkpoint_step_4/{TRAINING_STATE_FILE}") in errors
    with pytest.raises(ResumeRefusedError, match="does not match its manifest"):
        load_for_resume(folder)
