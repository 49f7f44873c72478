from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ckptkit.storage.manifest import Manifest, ManifestFile, manifest_path, write_manifest
from ckptkit.training.retention import (
    CheckpointRecord,
    delete_checkpoint,
    list_checkpoints,
    select_for_deletion,
    unconfirmed_checkpoints,
)


def _record(name: str, step: int, loss: float | None, kind: str = "periodic", batch: int = 0) -> CheckpointRecord:
    metric = None if loss is None else {"name": "val_loss", "value": loss, "mode": "min"}
    manifest = Manifest(checkpoint=name, files=(ManifestFile(name, 1, 0),), kind=kind, global_step=step,
                        progress={"epoch": 0, "batch_in_epoch": batch, "steps_per_epoch": 100}, metric=metric)
    return CheckpointRecord(Path(name), manifest)


def _write(run: Path, name: str, step: int, loss: float | None, kind: str = "periodic") -> Path:
    path = run / name
    path.write_bytes(b"x")
    record = _record(name, step, loss, kind)
    write_manifest(path, record.manifest)
    return path


def test_the_last_k_by_progress_and_the_best_are_kept(tmp_path: Path) -> None:
    steps_and_losses = [(5, 3.0), (10, 1.0), (15, 2.0), (20, 2.5), (25, 2.2)]
    records = [_record(f"checkpoint_step_{s}.pt", s, loss) for s, loss in steps_and_losses]
    deleted = select_for_deletion(records, keep_last=2)
    assert [r.path.name for r in deleted] == ["checkpoint_step_5.pt", "checkpoint_step_15.pt"]


def test_progress_orders_checkpoints_not_names_or_mtimes(tmp_path: Path) -> None:
    old = _write(tmp_path, "checkpoint_step_1000.pt", 1000, None)
    new = _write(tmp_path, "checkpoint_step_500.pt", 1500, None)  # a name that lies
    os.utime(old, (2_000_000_000, 2_000_000_000))  # and an mtime that lies
    assert [r.path.name for r in list_checkpoints(tmp_path)] == ["checkpoint_step_1000.pt", "checkpoint_step_500.pt"]
    assert [r.path for r in select_for_deletion(list_checkpoints(tmp_path), keep_last=1)] == [old]
    assert new.exists()


def test_best_and_final_files_are_never_candidates(tmp_path: Path) -> None:
    records = [_record("best_model.pt", 5, 0.5, "best"), _record("final_model.pt", 30, 2.0, "final"),
               _record("checkpoint_step_30.pt", 30, 2.0)]
    assert select_for_deletion(records, keep_last=1) == []


def test_of_equally_good_checkpoints_the_most_advanced_is_kept_as_best() -> None:
    records = [_record(f"checkpoint_step_{s}.pt", s, loss) for s, loss in [(10, 1.0), (20, 1.0), (30, 2.0)]]
    assert [r.path.name for r in select_for_deletion(records, keep_last=1)] == ["checkpoint_step_10.pt"]


def test_deletion_removes_the_manifest_before_the_file(tmp_path: Path, monkeypatch) -> None:
    path = _write(tmp_path, "checkpoint_step_5.pt", 5, 1.0)
    seen = []
    real_unlink = os.unlink
    monkeypatch.setattr(os, "unlink", lambda p: (seen.append(Path(p).name), real_unlink(p)))
    delete_checkpoint(path)
    assert seen == ["checkpoint_step_5.pt.manifest.json", "checkpoint_step_5.pt"]
    assert list(tmp_path.iterdir()) == []


def test_files_without_a_manifest_are_listed_as_unconfirmed_and_never_as_checkpoints(tmp_path: Path) -> None:
    _write(tmp_path, "checkpoint_step_5.pt", 5, 1.0)
    (tmp_path / "checkpoint_step_10.pt").write_bytes(b"x")
    (tmp_path / "checkpoint_step_15.pt.ckptkit-tmp-new-abc").write_bytes(b"x")
    assert [r.path.name for r in list_checkpoints(tmp_path)] == ["checkpoint_step_5.pt"]
    assert [p.name for p in unconfirmed_checkpoints(tmp_path)] == [
        "checkpoint_step_10.pt", "checkpoint_step_15.pt.ckptkit-tmp-new-abc"]


def test_a_manifest_whose_checkpoint_is_gone_is_not_listed(tmp_path: Path) -> None:
    path = _write(tmp_path, "checkpoint_step_5.pt", 5, 1.0)
    path.unlink()
    assert manifest_path(path).exists()
    assert list_checkpoints(tmp_path) == []


_losses = st.one_of(st.none(), st.floats(0.0, 10.0, allow_nan=False), st.just(float("nan")))


@settings(max_examples=200, deadline=None)
@given(
    entries=st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3), _losses,
                               st.sampled_from(["periodic", "interrupt", "best", "final"])),
                     min_size=1, max_size=12),
    keep_last=st.integers(1, 4),
)
def test_retention_never_deletes_the_newest_the_best_or_more_than_it_may(entries, keep_last) -> None:
    records = [_record(f"c{i}.pt", step, loss, kind, batch) for i, (step, batch, loss, kind) in enumerate(entries)]
    deleted = {r.path for r in select_for_deletion(records, keep_last)}
    newest_key = max(r.progress_key for r in records)
    assert any(r.path not in deleted for r in records if r.progress_key == newest_key)
    prunable = [r for r in records if r.kind in ("periodic", "interrupt")]
    scored = [r for r in prunable if r.metric_value is not None]
    if scored:
        best_value = min(r.metric_value for r in scored)
        assert any(r.metric_value == best_value and r.path not in deleted for r in scored)
    assert all(r.kind in ("periodic", "interrupt") for r in records if r.path in deleted)
    kept_prunable = sorted((r for r in prunable if r.path not in deleted), key=lambda r: r.progress_key)
    top = sorted(prunable, key=lambda r: r.progress_key)[-keep_last:]
    assert all(r in kept_prunable for r in top)
    assert len(kept_prunable) <= keep_last + 2
