"""scan_run: every checkpoint below a directory, ordered by progress, with health, markers and traps."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptkit.runs import run_findings_for, scan_run
from ckptkit.validating import validate_path
from tests.run_builders import REAL, experiment_file, hf_checkpoint, hub_snapshot, seed003_folder


def rows(run) -> list[tuple[str, str, str]]:
    return [(e.relative, e.health.status, ",".join(e.markers)) for e in run.entries]


def run_codes(run) -> list[tuple[str, str]]:
    return [(f.code, f.where) for f in run.findings]


@pytest.fixture
def seed004_run(tmp_path: Path) -> Path:
    """best_model.pt (step 500) beside periodic checkpoints up to step 2000, mtimes in reverse."""
    ckpts = tmp_path / "checkpoints"
    for i, (name, step) in enumerate([("checkpoint_step_500.pt", 500), ("checkpoint_step_1000.pt", 1000),
                                      ("checkpoint_step_2000.pt", 2000), ("best_model.pt", 500)]):
        path = experiment_file(ckpts / name, step)
        os.utime(path, (1_000_000 - i * 1000, 1_000_000 - i * 1000))   # newest file = least progress
    return ckpts


def test_hf_checkpoints_are_ordered_by_global_step_not_by_name(tmp_path: Path) -> None:
    for step in (1000, 500, 1500):
        hf_checkpoint(tmp_path / f"checkpoint-{step}", step, step / 1000)
    run = scan_run(tmp_path)
    assert [e.relative for e in run.entries] == ["checkpoint-500", "checkpoint-1000", "checkpoint-1500"]
    assert [e.progress.global_step for e in run.entries] == [500, 1000, 1500]
    assert rows(run)[-1] == ("checkpoint-1500", "ok", "latest,resume")
    assert run.findings == []


def test_best_model_behind_later_checkpoints_is_a_run_finding_seed_004(seed004_run: Path) -> None:
    run = scan_run(seed004_run)
    assert rows(run) == [("best_model.pt", "ok", "best"), ("checkpoint_step_500.pt", "ok", ""),
                         ("checkpoint_step_1000.pt", "ok", ""), ("checkpoint_step_2000.pt", "ok", "latest,resume")]
    assert run_codes(run) == [("run.best-not-latest", "best_model.pt")]
    finding = run.findings[0]
    assert "resume from checkpoint_step_2000.pt" in finding.message
    assert finding.fix == f"ckptkit latest {seed004_run}"


def test_run_findings_for_one_checkpoint_are_the_ones_about_it(seed004_run: Path) -> None:
    assert [f.code for f in run_findings_for(seed004_run / "best_model.pt")] == ["run.best-not-latest"]
    assert run_findings_for(seed004_run / "checkpoint_step_2000.pt") == []
    assert [f.code for f in run_findings_for(seed004_run)] == ["run.best-not-latest"]


def test_validate_reports_the_run_trap_only_when_siblings_are_looked_at(seed004_run: Path) -> None:
    assert "run.best-not-latest" in [f.code for f in validate_path(seed004_run / "best_model.pt").findings]
    alone = validate_path(seed004_run / "best_model.pt", siblings=False)
    assert "run.best-not-latest" not in [f.code for f in alone.findings]


def test_last_checkpoint_older_than_a_sibling_is_stale_seed_003(tmp_path: Path) -> None:
    seed003_folder(tmp_path / "epoch_1_end", epoch=1, step=0)          # epoch 1 finished
    seed003_folder(tmp_path / "last_checkpoint", epoch=1, step=1000)    # rolled back to mid-epoch 1
    run = scan_run(tmp_path)
    assert [e.relative for e in run.entries] == ["last_checkpoint", "epoch_1_end"]
    assert run.entries[0].progress.describe() == "epoch 1 INCOMPLETE: 1000/1270 batches (78.7%)"
    assert run_codes(run) == [("run.stale-latest", "last_checkpoint")]
    assert "older than epoch_1_end (epoch 1 complete)" in run.findings[0].message


def test_temporary_leftovers_are_broken_rows_never_picked_for_resume(tmp_path: Path) -> None:
    hf_checkpoint(tmp_path / "checkpoint-1000", 1000, 1.0)
    hf_checkpoint(tmp_path / "tmp-checkpoint-1500", 1500, 1.5)
    hf_checkpoint(tmp_path / "checkpoint-2000.ckptkit-tmp-new-1a2b3c", 2000, 2.0)
    (tmp_path / "model.pt.ckptkit-tmp-new-9f8e").write_bytes(b"PK\x03\x04partial")
    (tmp_path / "best_model.pt.ckptkit-tmp-new-77aa").write_bytes(b"PK\x03\x04partial")
    run = scan_run(tmp_path)
    temporary = {e.relative: (e.health.status, e.temporary, e.markers) for e in run.entries if e.temporary}
    assert temporary == {"tmp-checkpoint-1500": ("broken", True, []),
                         "checkpoint-2000.ckptkit-tmp-new-1a2b3c": ("broken", True, []),
                         "model.pt.ckptkit-tmp-new-9f8e": ("broken", True, []),
                         "best_model.pt.ckptkit-tmp-new-77aa": ("broken", True, [])}   # not "best"
    assert run.resume is not None and run.resume.relative == "checkpoint-1000"
    assert sorted(w for c, w in run_codes(run) if c == "run.temporary-leftover") == sorted(temporary)
    tmp_row = next(e for e in run.entries if e.relative == "tmp-checkpoint-1500")
    assert tmp_row.health.reason.startswith("temporary: left by a save that did not finish")


def test_hf_checkpoint_without_trainer_state_is_broken_and_a_run_finding(tmp_path: Path) -> None:
    hf_checkpoint(tmp_path / "checkpoint-500", 500, 0.5)
    (hf_checkpoint(tmp_path / "checkpoint-1000", 1000, 1.0) / "trainer_state.json").unlink()
    run = scan_run(tmp_path)
    assert rows(run) == [("checkpoint-1000", "broken", ""), ("checkpoint-500", "ok", "latest,resume")]
    assert run.entries[0].health.reason.startswith("folder.missing-trainer-state: no trainer_state.json")
    assert run_codes(run) == [("run.hf-missing-trainer-state", "checkpoint-1000")]
    assert "would restart at step 0" in run.findings[0].message


def test_unreadable_partial_and_foreign_things_are_broken_rows_not_crashes(tmp_path: Path) -> None:
    hf_checkpoint(tmp_path / "checkpoint-500", 500, 0.5)
    good = (REAL / "hf_full" / "checkpoint-4" / "optimizer.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[:1000])
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "checkpoint-700").mkdir()
    (tmp_path / "checkpoint-700" / "notes.txt").write_text("nothing here")
    (tmp_path / "dcp_partial").mkdir()
    shutil.copy(REAL / "dcp" / "__0_0.distcp", tmp_path / "dcp_partial" / "__0_0.distcp")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    run = scan_run(tmp_path)
    reasons = {e.relative: e.health.reason for e in run.entries if e.health.status == "broken"}
    assert set(reasons) == {"truncated.pt", "empty.pth", "checkpoint-700", "dcp_partial"}
    assert reasons["truncated.pt"].startswith("zip archive is truncated")
    assert reasons["empty.pth"].startswith("empty file (0 bytes)")
    assert reasons["checkpoint-700"].startswith("not a checkpoint folder ckptkit knows")
    assert reasons["dcp_partial"] == ("DCP data files without .metadata: the save did not finish "
                                      "(torch.distributed.checkpoint writes .metadata last, after every rank's data); "
                                      "resume from an earlier checkpoint")
    assert run.resume.relative == "checkpoint-500"


def test_furthest_checkpoint_with_an_error_makes_latest_fall_back_and_says_so(tmp_path: Path) -> None:
    hf_checkpoint(tmp_path / "checkpoint-1000", 1000, 1.0)
    folder = hf_checkpoint(tmp_path / "checkpoint-2000", 2000, 2.0, max_steps=4000, num_train_epochs=4)
    (folder / "optimizer.pt").write_bytes((folder / "optimizer.pt").read_bytes()[:500])
    run = scan_run(tmp_path)
    assert rows(run) == [("checkpoint-1000", "ok", "resume"), ("checkpoint-2000", "broken", "latest")]
    assert run_codes(run) == [("run.latest-broken", "checkpoint-2000")]
    assert "the most advanced usable one is checkpoint-1000" in run.findings[0].message


def test_member_files_of_a_recognised_folder_are_not_rows_but_nested_checkpoints_are(tmp_path: Path) -> None:
    out = tmp_path / "output"
    shutil.copytree(REAL / "hf_sharded", out)                 # trainer.save_model(output_dir)
    hf_checkpoint(out / "checkpoint-10", 10, 2.0, max_steps=10)
    run = scan_run(out)
    assert [(e.relative, e.format) for e in run.entries] == [(".", "save-pretrained"), ("checkpoint-10", "hf-trainer")]


def test_real_hf_run_marks_the_best_checkpoint_from_the_newest_trainer_state() -> None:
    run = scan_run(REAL / "hf_full")
    assert rows(run) == [("checkpoint-4", "ok", ""), ("checkpoint-8", "ok", ""),
                         ("checkpoint-10", "ok", "latest,best,final,resume")]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.integers(1, 10**6), min_size=2, max_size=6, unique=True), data=st.data())
def test_order_follows_global_step_whatever_the_folder_names(tmp_path_factory, steps: list[int], data) -> None:
    root = tmp_path_factory.mktemp("run")
    names = data.draw(st.permutations([f"checkpoint-{i}" for i in range(len(steps))]))
    for name, step in zip(names, steps, strict=True):
        (root / name).mkdir()
        (root / name / "trainer_state.json").write_text(f'{{"global_step": {step}, "epoch": 0.5}}')
    run = scan_run(root)
    assert [e.progress.global_step for e in run.entries] == sorted(steps)
    assert run.entries[-1].markers[0] == "latest"


def test_latest_passes_over_a_checkpoint_whose_bytes_no_longer_match_its_manifest_crc(tmp_path: Path) -> None:
    """A same-size rollback or bit flip: ls compares sizes only, but the resume pick is CRC-checked
    as the resume will check it, and the next checkpoint back is taken."""
    import zipfile

    from ckptkit.training import CheckpointManager
    from tests.training.conftest import _make_state

    with CheckpointManager(tmp_path) as manager:
        manager.save(_make_state(step=3), ["periodic"])
        manager.save(_make_state(step=4), ["periodic"])
    newest = tmp_path / "checkpoint_step_4.pt"
    with zipfile.ZipFile(newest) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename)
    raw = bytearray(newest.read_bytes())
    raw[info.header_offset + 100] ^= 0x01            # same size: only the CRC-32 can tell
    newest.write_bytes(bytes(raw))
    run = scan_run(tmp_path)
    assert run.resume is not None and run.resume.relative == "checkpoint_step_3.pt"
    entry = {e.relative: e for e in run.entries}["checkpoint_step_4.pt"]
    assert entry.health.status == "broken" and entry.health.reason.startswith(
        "integrity.manifest-mismatch: checkpoint_step_4.pt: CRC-32")
    assert "run.latest-broken" in [f.code for f in run.findings]


def test_a_hub_cache_lists_its_snapshot_once_not_its_blobs_again(tmp_path: Path) -> None:
    """models--X/{blobs,refs,snapshots}: each snapshot file links to a blob named by its hash."""
    model = tmp_path / "models--org--tiny"
    snapshot = hub_snapshot(model, REAL / "hf_sharded")
    assert [(e.path, e.format) for e in scan_run(model).entries] == [(snapshot, "save-pretrained")]
    (model / "refs" / "main").unlink()
    (model / "refs").rmdir()         # not a hub cache: the blobs are files like any other
    assert {e.path.parent.name for e in scan_run(model).entries} == {"blobs", "snapshots"}
