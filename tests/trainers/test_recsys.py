"""The recsys trainer (LlamaRec retriever): its layout and names, exact resume, `ckptkit resume`, refusals."""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ckptkit.core.checkpoint import Severity
from ckptkit.formats import open_checkpoint
from ckptkit.runs.resuming import plan_resume
from ckptkit.training import load_for_resume
from ckptkit.validating import validate_path
from trainers.recsys import PRESETS, RecsysRun, RunOptions, main

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = PRESETS["tiny"]  # 10 batches per epoch, 2 per optimizer step, 4 epochs = 40 batches
FINAL, RECENT, BEST = "checkpoint-recent.pth.final", "checkpoint-recent.pth", "best_acc_model.pth"


def _run(out: Path, resume=None, **options) -> object:
    return RecsysRun(CONFIG, RunOptions(out=out, device="cpu", progress_stream=io.StringIO(), **options), resume).run()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    result = _run(out)
    assert result.status == "finished" and result.record.global_step == 20
    return out


def test_the_run_saves_seed_000_names_and_keys_with_ckptkit_extras_and_manifests(uninterrupted: Path) -> None:
    names = sorted(p.name for p in uninterrupted.iterdir() if not p.name.endswith(".manifest.json"))
    assert names == [BEST, RECENT, FINAL]
    assert all((uninterrupted / (n + ".manifest.json")).is_file() for n in names)
    final = torch.load(uninterrupted / FINAL, weights_only=True)
    assert list(final) == [
        "model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "epoch", "accuracy", "best_acc",
        "global_step", "config", "rng_state", "data_position", "ckptkit",
    ]  # no scaler_state_dict: fp32 on CPU has no GradScaler
    # LlamaRec: 'epoch' is the number of epochs finished, as data_position says
    assert (final["epoch"], final["global_step"], final["data_position"]["epoch"]) == (4, 20, 4)
    assert final["accuracy"] == final["best_acc"] == pytest.approx(16 / 40)  # 16 of 40 users' next items
    assert final["ckptkit"] == {"version": 1, "trainer": "recsys", "kind": "final", "world_size": 1,
                                "sharded": False, "layout": "recsys"}
    assert final["config"]["grad_accum"] == 2 and final["config"]["precision"] == "fp32"
    recent = torch.load(uninterrupted / RECENT, weights_only=True)
    assert recent["ckptkit"]["kind"] == "periodic" and recent["epoch"] == 4


@pytest.mark.parametrize(
    ("stop_at", "position"),
    [
        pytest.param(10, (1, 0, 0), id="at-the-end-of-an-epoch"),
        pytest.param(13, (1, 3, 1), id="mid-epoch-inside-an-accumulation-window"),
    ],
)
def test_an_interrupted_run_resumed_from_its_interrupt_checkpoint_equals_the_uninterrupted_run(
    uninterrupted: Path, tmp_path: Path, stop_at: int, position: tuple[int, int, int]
) -> None:
    stopped = _run(tmp_path, stop_at_micro_step=stop_at)
    assert stopped.status == "interrupted" and stopped.checkpoints[-1].name == RECENT
    point = load_for_resume(tmp_path)
    assert point.path.name == RECENT and point.checkpoint["ckptkit"]["kind"] == "interrupt"
    assert (point.position.epoch, point.position.batch_in_epoch, point.position.micro_step) == position
    assert point.checkpoint["epoch"] == 1  # epochs finished, mid-epoch too: LlamaRec restarts the 2nd epoch
    assert ("accumulation" in point.checkpoint) == bool(position[2])
    assert _run(tmp_path, point).status == "finished"
    assert (tmp_path / FINAL).read_bytes() == (uninterrupted / FINAL).read_bytes()
    assert (tmp_path / BEST).read_bytes() == (uninterrupted / BEST).read_bytes()


def test_a_mid_epoch_interrupt_checkpoint_reads_as_an_incomplete_epoch_of_the_recsys_family(tmp_path: Path) -> None:
    _run(tmp_path, stop_at_micro_step=13)
    ckpt = open_checkpoint(tmp_path / RECENT)
    assert ckpt.family == "recsys"
    p = ckpt.progress
    assert (p.epochs_completed, p.step_in_epoch, p.steps_per_epoch, p.epoch_complete, p.global_step) == (
        1,
        3,
        10,
        False,
        6,
    )
    assert p.describe().startswith("epoch 2 INCOMPLETE: 3/10 batches")


def test_ls_reads_the_run_as_recsys_and_marks_the_final_file(uninterrupted: Path) -> None:
    from ckptkit.runs import scan_run

    run = scan_run(uninterrupted)
    entries = {e.path.name: e for e in run.entries}
    assert {name: open_checkpoint(uninterrupted / name).family for name in entries} == {
        n: "recsys" for n in (BEST, RECENT, FINAL)
    }
    assert "final" in entries[FINAL].markers and "final" not in entries[RECENT].markers
    assert entries[FINAL].progress.training_finished and entries[FINAL].progress.epochs_completed == 4
    assert run.resume is not None and run.resume.path.name == FINAL


def test_validate_finds_no_errors_and_no_warnings_in_the_trainers_checkpoints(
    uninterrupted: Path, tmp_path: Path
) -> None:
    _run(tmp_path, stop_at_micro_step=13)
    for path in [uninterrupted / BEST, uninterrupted / RECENT, uninterrupted / FINAL, tmp_path / RECENT]:
        report = validate_path(path, deep=True)
        noisy = [f.code for f in report.findings if f.severity is not Severity.INFO]
        assert noisy == [], (path, noisy)


def test_a_run_killed_mid_epoch_is_continued_by_ckptkit_resume_to_the_uninterrupted_bytes(
    uninterrupted: Path, tmp_path: Path
) -> None:
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    flags = ["--config", "tiny", "--out", str(killed), "--device", "cpu"]
    # batch 25 is mid epoch 3; --sync-save: epoch 2's checkpoints are surely committed by then
    done = subprocess.run(
        [sys.executable, "-m", "trainers.recsys", *flags, "--sync-save", "--kill-at-micro-step", "25"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert not (killed / FINAL).exists()
    plan = plan_resume(killed)
    assert plan.trainer == "recsys" and plan.command[1:3] == ["-m", "trainers.recsys"]
    assert plan.checkpoint.name == RECENT and plan.progress.epochs_completed == 2
    resumed = subprocess.run([sys.executable, "-m", "ckptkit", "resume", str(killed), "--", "--device", "cpu"], env=env,
                             capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "with the 'recsys' trainer" in resumed.stdout and "finished: 4 epochs, step 20" in resumed.stdout
    assert (killed / FINAL).read_bytes() == (uninterrupted / FINAL).read_bytes()


def test_a_corrupt_checkpoint_is_refused_with_one_line_and_exit_2(uninterrupted: Path, tmp_path: Path, capsys) -> None:
    run = Path(shutil.copytree(uninterrupted, tmp_path / "run"))
    target = run / RECENT
    os.truncate(target, 5000)
    assert main(["--resume", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {target}: does not match its manifest: {target.name}: 5000 bytes on disk")
    assert len(err.splitlines()) == 1


def test_a_finished_run_is_refused_and_extended_with_num_epochs(uninterrupted: Path, tmp_path: Path, capsys) -> None:
    run = Path(shutil.copytree(uninterrupted, tmp_path / "run"))
    assert main(["--resume_from_checkpoint", str(run / FINAL), "--device", "cpu"]) == 2
    assert (
        "is a finished run: epoch 4 of 4. Nothing to resume. To train further: --epochs N (N > 4)."
        in capsys.readouterr().err
    )
    assert main(["--resume_from_checkpoint", str(run / FINAL), "--num_epochs", "5", "--device", "cpu"]) == 0
    assert "note: training to 5 epochs (the run had 4)" in capsys.readouterr().out
    final = torch.load(run / FINAL, weights_only=True)
    assert (final["epoch"], final["global_step"], final["data_position"]["epoch"]) == (5, 25, 5)


def test_fix_epoch_on_an_interrupt_checkpoint_moves_epoch_data_position_and_global_step_together(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from ckptkit.cli import main as cli

    _run(tmp_path, stop_at_micro_step=13)
    path = tmp_path / RECENT
    result = CliRunner().invoke(cli, ["fix-epoch", str(path), "--epoch", "2", "--complete", "--no-backup"])
    assert result.exit_code == 0, result.output
    fixed = torch.load(path, weights_only=True)
    position = fixed["data_position"]
    assert (fixed["epoch"], position["epoch"], position["batch_in_epoch"], position["micro_step"],
            fixed["global_step"]) == (2, 2, 0, 0, 10)
    assert [f.code for f in validate_path(path).findings if f.severity is not Severity.INFO] == []


def test_best_acc_model_is_rewritten_only_when_accuracy_improves(tmp_path: Path) -> None:
    _run(tmp_path, stop_at_micro_step=30)  # the end of epoch 3, whose accuracy (0.275) only ties epoch 2's
    best = torch.load(tmp_path / BEST, weights_only=True)
    recent = torch.load(tmp_path / RECENT, weights_only=True)
    assert (best["epoch"], best["ckptkit"]["kind"]) == (2, "best")
    assert (recent["epoch"], recent["accuracy"], recent["ckptkit"]["kind"]) == (3, pytest.approx(11 / 40), "interrupt")
    assert recent["best_acc"] == best["accuracy"] == recent["accuracy"]  # a tie is no improvement


def test_a_recsys_file_without_a_manifest_in_the_run_is_named_and_not_resumed_from(
    uninterrupted: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(uninterrupted, tmp_path / "run"))
    (run / (FINAL + ".manifest.json")).unlink()  # as if the save of the final file crashed before its commit
    point = load_for_resume(run)
    assert point.path.name == RECENT
    assert f"{FINAL}: left by an interrupted save (no manifest); not used" in point.warnings
