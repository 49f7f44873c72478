"""Repairs of checkpoints written by ckptkit's trainers keep their completion manifests true, so
a repaired checkpoint still resumes; a repair's backup is shown by `ls` but never resumed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptkit.core.errors import CkptkitError
from ckptkit.formats import open_checkpoint
from ckptkit.repair import fix_epoch
from ckptkit.runs import scan_run
from ckptkit.storage import atomic
from ckptkit.storage.crc import file_crc32
from ckptkit.storage.manifest import manifest_path, read_manifest
from ckptkit.training import CheckpointManager, load_for_resume
from ckptkit.training.layout import TRAINING_STATE_FILE
from ckptkit.training.resume import resolve_checkpoint
from tests.training.conftest import _make_state


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A ckptkit run directory: checkpoint_step_3.pt and checkpoint_step_4.pt, with manifests.
    Step 4 is 8 batches into the first 10-batch epoch (2 batches per optimizer step)."""
    run = tmp_path / "run"
    with CheckpointManager(run) as manager:
        manager.save(_make_state(step=3), ["periodic"])
        manager.save(_make_state(step=4), ["periodic"])
    return run


def test_fix_epoch_renews_the_manifest_and_the_checkpoint_still_resumes(run: Path) -> None:
    path = run / "checkpoint_step_4.pt"
    old = read_manifest(path)
    fix_epoch(path, 1)                                   # epoch 1 complete: 10 batches, 5 steps
    new = read_manifest(path)
    assert [(f.path, f.size, f.crc32) for f in new.files] == [
        ("checkpoint_step_4.pt", path.stat().st_size, file_crc32(path))]
    assert new.files != old.files
    assert (new.global_step, new.progress["epoch"], new.progress["batch_in_epoch"]) == (5, 1, 0)
    assert (new.kind, new.metric, new.trainer) == (old.kind, old.metric, old.trainer)
    point = load_for_resume(path)                        # before: "does not match its manifest"
    assert point.checkpoint["global_step"] == 5 and point.checkpoint["data_position"]["epoch"] == 1
    assert resolve_checkpoint(run)[0] == path            # the run resumes from it, by its new progress
    assert not manifest_path(run / "checkpoint_step_4.pt.bak").exists()   # the backup is never confirmed


def test_a_refused_rewrite_leaves_the_old_manifest_byte_for_byte(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ckptkit.repair import rewrite

    path = run / "checkpoint_step_4.pt"
    before = manifest_path(path).read_bytes(), path.read_bytes()

    def refuse(*args, **kwargs):
        raise CkptkitError(path, "read back with other bytes")

    monkeypatch.setattr(rewrite, "check_archive", refuse)
    with pytest.raises(CkptkitError, match="read back with other bytes"):
        fix_epoch(path, 1)
    assert (manifest_path(path).read_bytes(), path.read_bytes()) == before
    load_for_resume(path)


def test_a_failure_after_the_rename_leaves_no_manifest_vouching_for_the_old_bytes(
        run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = run / "checkpoint_step_4.pt"
    real_fsync_dir = atomic.fsync_dir
    calls = []

    def failing_fsync_dir(folder: Path) -> None:
        calls.append(folder)
        if len(calls) == 2:                              # the one after os.replace (the first: the backup link)
            raise OSError(5, "Input/output error")
        real_fsync_dir(folder)

    monkeypatch.setattr(atomic, "fsync_dir", failing_fsync_dir)
    with pytest.raises(OSError):
        fix_epoch(path, 1)
    assert open_checkpoint(path).tree["global_step"] == 5   # the new bytes are in place...
    assert not manifest_path(path).exists()                   # ...and nothing vouches for them
    resumed, notes = resolve_checkpoint(run)
    assert resumed == run / "checkpoint_step_3.pt"
    assert any("checkpoint_step_4.pt: left by an interrupted save (no manifest)" in n for n in notes)


def test_a_backup_is_marked_and_never_taken_as_latest_even_when_further(run: Path) -> None:
    path = run / "checkpoint_step_4.pt"
    fix_epoch(path, 1, step=2)                          # rewind: 2 batches into epoch 1, step 1
    found = {e.relative: e for e in scan_run(run).entries}
    assert found["checkpoint_step_4.pt.bak"].markers == ["backup"]
    assert found["checkpoint_step_4.pt.bak"].backup and found["checkpoint_step_4.pt.bak"].to_json()["backup"]
    assert scan_run(run).resume.relative == "checkpoint_step_3.pt"   # the further checkpoint now
    assert "latest" in found["checkpoint_step_3.pt"].markers


@pytest.mark.usefixtures("one_rank_group")
def test_fix_epoch_on_a_sharded_folder_rewrites_its_training_state_and_renews_the_folder_manifest(
        tmp_path: Path) -> None:
    run = tmp_path / "run"
    with CheckpointManager(run, sharded=True) as manager:
        manager.save(_make_state(step=4), ["periodic"])
    folder = run / "checkpoint_step_4"
    old = {f.path: f for f in read_manifest(folder).files}
    shards = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != TRAINING_STATE_FILE}
    result = fix_epoch(folder, 1)
    assert result.written and result.backups == [str(folder / f"{TRAINING_STATE_FILE}.bak")]
    assert open_checkpoint(folder).progress.describe().startswith("epoch 1 complete")
    assert {p.name: p.read_bytes() for p in folder.iterdir()
            if p.name not in (TRAINING_STATE_FILE, f"{TRAINING_STATE_FILE}.bak")} == shards
    new = read_manifest(folder)
    member = f"checkpoint_step_4/{TRAINING_STATE_FILE}"
    assert {f.path: f for f in new.files if f.path != member} == {k: v for k, v in old.items() if k != member}
    assert [(f.size, f.crc32) for f in new.files if f.path == member] == [
        ((folder / TRAINING_STATE_FILE).stat().st_size, file_crc32(folder / TRAINING_STATE_FILE))]
    assert (new.global_step, new.progress["epoch"]) == (5, 1)
    assert json.loads(manifest_path(folder).read_text())["files"]   # still a manifest ckptkit reads
    load_for_resume(folder)
