"""timm's train.py checkpoints, as timm's own CheckpointSaver writes them (tests/fixtures/real/timm/,
scripts/make_real_fixtures.py), held to what timm's own resume_checkpoint returned for each file
(`resumes.json`: the 0-based epoch train.py's loop starts at)."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ckptkit.formats import open_checkpoint
from ckptkit.repair.epoch import fix_epoch
from ckptkit.runs import pick_resume, scan_run
from ckptkit.validating import validate_path
from tests.validation.helpers import codes, only

FIXTURE = Path(__file__).parents[1] / "fixtures" / "real" / "timm"
RESUMES: dict[str, int] = json.loads((FIXTURE / "resumes.json").read_text(encoding="utf-8"))


def _load(path: Path) -> dict:
    with torch.serialization.safe_globals([argparse.Namespace]):    # as timm's own _torch_load
        return torch.load(path, weights_only=True)


@pytest.mark.parametrize("name", sorted(RESUMES))
def test_the_resume_line_starts_the_epoch_timms_own_resume_checkpoint_returns(name: str) -> None:
    ckpt = open_checkpoint(FIXTURE / name)
    assert ckpt.family == "timm"
    resume = ckpt.progress.resume
    assert resume is not None and (resume.start_epoch, resume.start_batch) == (RESUMES[name] + 1, 0)
    assert resume.system == "timm train.py" and resume.how == "--resume"


@pytest.mark.parametrize("name, done, updates", [
    ("run/last.pth.tar", 3, None), ("run/checkpoint-1.pth.tar", 2, None), ("run/model_best.pth.tar", 3, None),
    ("crashed/checkpoint-0.pth.tar", 1, None), ("crashed/recovery-1-2.pth.tar", 1, 3),
    ("crashed/recovery-2-2.pth.tar", 2, 3), ("crashed/tmp.pth.tar", 3, None)])
def test_epoch_is_the_index_of_the_last_epoch_trained_and_a_recovery_name_says_how_far_into_the_next(
        name: str, done: int, updates: int | None) -> None:
    stored = _load(FIXTURE / name)
    assert (stored["version"], stored["arch"], type(stored["args"])) == (2, "tiny_mlp", argparse.Namespace)
    progress = open_checkpoint(FIXTURE / name).progress
    assert progress.epochs_completed == done
    assert (progress.epoch_complete, progress.step_in_epoch) == ((True, None) if updates is None else (False, updates))
    assert progress.stored == {"epoch": stored["epoch"], "version": 2}


@pytest.mark.parametrize("name", ["run/last.pth.tar", "run/checkpoint-1.pth.tar", "run/model_best.pth.tar"])
def test_an_end_of_epoch_file_validates_with_no_warning(name: str) -> None:
    """The pickled args Namespace loads in timm (safe_globals), and timm saves no scheduler on
    purpose (it steps the schedule to the resumed epoch): neither is a warning."""
    report = validate_path(FIXTURE / name)
    assert {(f.code, f.severity.value) for f in report.findings} == {("compat.pickled-class-allowed", "info")}
    allowed = only(report, "compat.pickled-class-allowed")
    assert "argparse.Namespace" in allowed.message and "timm's own resume" in allowed.message
    metrics = open_checkpoint(FIXTURE / name).metrics
    assert "version" not in metrics and metrics["metric"] == pytest.approx(_load(FIXTURE / name)["metric"])


def test_the_same_namespace_without_timms_layout_is_still_a_warning(tmp_path: Path) -> None:
    """Only the system whose resume allows the class turns the warning into information."""
    stored = _load(FIXTURE / "run" / "last.pth.tar")
    del stored["version"]      # no longer timm's version-2 layout: a generic dict
    torch.save(stored, tmp_path / "plain.pt")
    assert "security.pickled-class" in codes(validate_path(tmp_path / "plain.pt"))


def test_a_recovery_file_warns_that_its_resume_skips_the_rest_of_its_epoch() -> None:
    report = validate_path(FIXTURE / "crashed" / "recovery-2-2.pth.tar")
    skip = only(report, "counters.resume-skips-rest-of-epoch")
    assert skip.severity.value == "warning"
    assert "inside the 3rd epoch after 3 optimizer updates" in skip.message and "= 3" in skip.message
    # Its resume does not continue inside the epoch: no reshuffling story about skipped batches.
    assert "rng.mid-epoch-not-exact" not in codes(report)
    resume = open_checkpoint(FIXTURE / "crashed" / "recovery-2-2.pth.tar").progress.resume
    assert resume is not None
    assert "the rest of the 3rd epoch after its first 3 updates is never trained" in resume.loses[0]


def test_latest_of_the_crashed_run_never_takes_the_temporary_file_and_names_what_it_becomes() -> None:
    run = scan_run(FIXTURE / "crashed")
    picked = pick_resume(run.entries)
    assert picked is not None and picked.path.name == "recovery-2-2.pth.tar"
    tmp = next(e for e in run.entries if e.path.name == "tmp.pth.tar")
    assert tmp.temporary and tmp.health.status == "broken"
    found = {f.code: f for f in run.findings}
    assert "timm saves into tmp.pth.tar and moves it to last.pth.tar when complete" in \
        found["run.temporary-leftover"].message
    # last.pth.tar is the end of the 2nd epoch; the recovery file of the 3rd is further without it being stale.
    assert "run.stale-latest" not in found


def test_a_last_file_behind_an_end_of_epoch_checkpoint_is_still_stale(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE / "run", tmp_path / "run")
    shutil.copy(FIXTURE / "crashed" / "last.pth.tar", tmp_path / "run" / "last.pth.tar")   # epoch 2's, over epoch 3's
    found = {f.code: f for f in scan_run(tmp_path / "run").findings}
    assert found["run.stale-latest"].where == "last.pth.tar"


def test_latest_of_a_finished_run_is_last_pth_tar_not_its_equal_copies() -> None:
    """last, checkpoint-2 and model_best are hard links to one file: the one named as the newest is taken."""
    done = subprocess.run([sys.executable, "-m", "ckptkit", "latest", str(FIXTURE / "run")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and Path(done.stdout.strip()).name == "last.pth.tar"


def test_fix_epoch_writes_the_index_its_resume_adds_one_to(tmp_path: Path) -> None:
    path = tmp_path / "last.pth.tar"
    shutil.copy(FIXTURE / "run" / "last.pth.tar", path)
    fix_epoch(path, 2, keep_backup=False)
    stored = _load(path)
    assert (stored["epoch"], stored["version"]) == (1, 2)
    assert stored["args"] == _load(FIXTURE / "run" / "last.pth.tar")["args"]
    resume = open_checkpoint(path).progress.resume
    assert resume is not None and resume.start_epoch == 3      # timm: epoch 1 + 1 = index 2, the 3rd epoch


def test_fix_epoch_refuses_what_a_recovery_files_name_would_contradict(tmp_path: Path) -> None:
    path = tmp_path / "recovery-2-2.pth.tar"
    shutil.copy(FIXTURE / "crashed" / "recovery-2-2.pth.tar", path)
    before = path.read_bytes()
    done = subprocess.run([sys.executable, "-m", "ckptkit", "fix-epoch", str(path), "--epoch", "3", "--complete"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "internal error" not in done.stderr
    assert "the name recovery-2-2.pth.tar records where inside its epoch" in done.stderr
    assert "copy it under another name" in done.stderr and path.read_bytes() == before


def test_a_recovery_save_left_in_recovery_tmp_is_a_temporary_too(tmp_path: Path) -> None:
    shutil.copy(FIXTURE / "crashed" / "recovery-1-2.pth.tar", tmp_path / "recovery-1-2.pth.tar")
    shutil.copy(FIXTURE / "crashed" / "recovery-2-2.pth.tar", tmp_path / "recovery_tmp.pth.tar")
    run = scan_run(tmp_path)
    picked = pick_resume(run.entries)
    assert picked is not None and picked.path.name == "recovery-1-2.pth.tar"
    leftover = next(f for f in run.findings if f.code == "run.temporary-leftover")
    assert leftover.where == "recovery_tmp.pth.tar" and "moves it to a recovery-E-U.pth.tar" in leftover.message
