"""The retrieval trainer (fashion recommender): its layout and names, exact resume, `ckptkit resume`, refusals."""
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
from trainers.retrieval import PRESETS, RetrievalRun, RunOptions, main

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = PRESETS["tiny"]  # 12 batches per epoch, 2 per optimizer step, 4 epochs = 48 batches
FINAL = "final_optimized_model_epoch_4_recall_0.2708.pt"


def _run(out: Path, resume=None, **options) -> object:
    return RetrievalRun(
        CONFIG, RunOptions(out=out, keep_last=None, progress_stream=io.StringIO(), **options), resume
    ).run()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    result = _run(out)
    assert result.status == "finished" and result.record.global_step == 24
    return out


def _assert_same_final(reference: Path, resumed: Path) -> None:
    a = torch.load(reference / FINAL, weights_only=True)
    b = torch.load(resumed / FINAL, weights_only=True)
    assert all(torch.equal(a["model_state_dict"][k], b["model_state_dict"][k]) for k in a["model_state_dict"])
    assert a["train_losses"] == b["train_losses"] and a["val_recalls"] == b["val_recalls"]
    assert (reference / FINAL).read_bytes() == (resumed / FINAL).read_bytes()


def test_the_run_saves_seed_001_names_and_keys_with_ckptkit_extras_and_manifests(uninterrupted: Path) -> None:
    names = sorted(p.name for p in uninterrupted.iterdir() if not p.name.endswith(".manifest.json"))
    assert names == [
        "best_optimized_model_recall_0.1458.pt", "best_optimized_model_recall_0.2083.pt",
        "best_optimized_model_recall_0.2292.pt", "best_optimized_model_recall_0.2708.pt", FINAL,
        "optimized_model_epoch_1_recall_0.1458.pt", "optimized_model_epoch_2_recall_0.2083.pt",
        "optimized_model_epoch_3_recall_0.2292.pt", "optimized_model_epoch_4_recall_0.2708.pt",
    ]
    assert all((uninterrupted / (n + ".manifest.json")).is_file() for n in names)
    final = torch.load(uninterrupted / FINAL, weights_only=True)
    assert list(final) == [
        "model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "epoch", "loss", "recall_at_10",
        "train_losses", "val_recalls", "global_step", "config", "rng_state", "data_position", "ckptkit",
    ]  # no scaler_state_dict: fp32 on CPU has no GradScaler (an fp16 run saves it: test_retrieval_gpu)
    assert (final["epoch"], final["global_step"], final["recall_at_10"]) == (4, 24, final["val_recalls"][-1])
    assert len(final["train_losses"]) == 4 and final["train_losses"][-1] < final["train_losses"][0]
    assert final["loss"] == final["train_losses"][-1]
    assert final["ckptkit"] == {"version": 1, "trainer": "retrieval", "kind": "final", "world_size": 1,
                                "sharded": False, "layout": "retrieval"}
    assert final["config"]["grad_accum"] == 2 and final["config"]["precision"] == "fp32"


@pytest.mark.parametrize(
    ("stop_at", "saved_as", "position"),
    [
        pytest.param(12, "interrupted_model_epoch_1_batch_0.pt", (1, 0, 0), id="at-the-end-of-an-epoch"),
        pytest.param(
            17, "interrupted_model_epoch_1_batch_5.pt", (1, 5, 1), id="mid-epoch-inside-an-accumulation-window"
        ),
    ],
)
def test_an_interrupted_run_resumed_from_its_interrupt_checkpoint_equals_the_uninterrupted_run(
    uninterrupted: Path, tmp_path: Path, stop_at: int, saved_as: str, position: tuple[int, int, int]
) -> None:
    stopped = _run(tmp_path, stop_at_micro_step=stop_at)
    assert stopped.status == "interrupted" and stopped.checkpoints[-1].name == saved_as
    point = load_for_resume(tmp_path)
    assert point.path.name == saved_as
    assert (point.position.epoch, point.position.batch_in_epoch, point.position.micro_step) == position
    assert ("accumulation" in point.checkpoint) == bool(position[2])
    assert _run(tmp_path, point).status == "finished"
    _assert_same_final(uninterrupted, tmp_path)


def test_a_mid_epoch_interrupt_checkpoint_reads_as_an_incomplete_epoch_of_the_retrieval_family(tmp_path: Path) -> None:
    _run(tmp_path, stop_at_micro_step=17)
    ckpt = open_checkpoint(tmp_path / "interrupted_model_epoch_1_batch_5.pt")
    assert ckpt.family == "retrieval"
    p = ckpt.progress
    assert (p.epochs_completed, p.step_in_epoch, p.steps_per_epoch, p.epoch_complete, p.global_step) == (
        1,
        5,
        12,
        False,
        8,
    )
    assert p.describe().startswith("epoch 2 INCOMPLETE: 5/12 batches")


def test_validate_finds_no_errors_and_no_warnings_in_the_trainers_checkpoints(
    uninterrupted: Path, tmp_path: Path
) -> None:
    _run(tmp_path, stop_at_micro_step=17)
    for path in [*sorted(uninterrupted.glob("*.pt")), tmp_path / "interrupted_model_epoch_1_batch_5.pt"]:
        # siblings=False: keep_last=None kept every superseded best file, which run.best-not-latest flags
        report = validate_path(path, deep=True, siblings=False)
        assert open_checkpoint(path).family == "retrieval"
        noisy = [f.code for f in report.findings if f.severity is not Severity.INFO]
        # config precision 'fp32' says no GradScaler was needed (the fashion recommender's own files say nothing,
        # and are still warned about)
        assert noisy == [], (path.name, noisy)


def test_a_run_killed_mid_epoch_is_continued_by_ckptkit_resume_to_the_uninterrupted_bytes(
    uninterrupted: Path, tmp_path: Path
) -> None:
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    flags = ["--config", "tiny", "--out", str(killed)]
    # batch 30 is mid epoch 3; --sync-save: epoch 2's checkpoints are surely committed by then
    # (in the background they may still be in flight: then the resume replays from epoch 1)
    done = subprocess.run(
        [sys.executable, "-m", "trainers.retrieval", *flags, "--sync-save", "--kill-at-micro-step", "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert not list(killed.glob("final_*"))
    plan = plan_resume(killed)
    assert plan.trainer == "retrieval" and plan.command[1:3] == ["-m", "trainers.retrieval"]
    assert plan.progress.epochs_completed == 2
    resumed = subprocess.run([sys.executable, "-m", "ckptkit", "resume", str(killed)], env=env,
                             capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "with the 'retrieval' trainer" in resumed.stdout and "finished: 4 epochs, step 24" in resumed.stdout
    assert (killed / FINAL).read_bytes() == (uninterrupted / FINAL).read_bytes()
    # retention (keep_last 3): superseded best files and the oldest epoch checkpoint are gone
    assert sorted(p.name for p in killed.glob("best_*.pt")) == ["best_optimized_model_recall_0.2708.pt"]
    assert not (killed / "optimized_model_epoch_1_recall_0.1458.pt").exists()


def test_a_corrupt_checkpoint_is_refused_with_one_line_and_exit_2(uninterrupted: Path, tmp_path: Path, capsys) -> None:
    run = Path(shutil.copytree(uninterrupted, tmp_path / "run"))
    target = run / "optimized_model_epoch_2_recall_0.2083.pt"
    os.truncate(target, 5000)
    assert main(["--resume", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {target}: does not match its manifest: {target.name}: 5000 bytes on disk")
    assert len(err.splitlines()) == 1


def test_a_finished_run_is_refused_and_extended_with_epochs(uninterrupted: Path, tmp_path: Path, capsys) -> None:
    run = Path(shutil.copytree(uninterrupted, tmp_path / "run"))
    assert main(["--resume", str(run / FINAL)]) == 2
    assert (
        "is a finished run: epoch 4 of 4. Nothing to resume. To train further: --epochs N (N > 4)."
        in capsys.readouterr().err
    )
    assert main(["--resume", str(run / FINAL), "--epochs", "5", "--batch", "16", "--lr", "0.005"]) == 0
    out = capsys.readouterr().out
    assert (
        "note: training to 5 epochs (the run had 4)" in out and "note: --batch-size 16 ignored: the run uses 32" in out
    )
    assert "note: --lr 0.005 used from here on (the run had 0.01)" in out
    final = torch.load(next(run.glob("final_optimized_model_epoch_5_*.pt")), weights_only=True)
    assert final["epoch"] == 5 and final["global_step"] == 30 and len(final["val_recalls"]) == 5
    assert final["config"]["learning_rate"] == 0.005 and final["scheduler_state_dict"]["base_lrs"] == [0.005]
    # warmup 4, decay 0.98 per step: step 30's learning rate from the new peak
    assert final["optimizer_state_dict"]["param_groups"][0]["lr"] == pytest.approx(0.005 * 0.98 ** 26)


def test_a_checkpoint_of_the_lm_trainer_is_refused_by_name(tmp_path: Path, capsys) -> None:
    path = tmp_path / "best_model.pt"
    torch.save({"model_state_dict": {}, "optimizer_state_dict": {}, "global_step": 3, "config": {},
                "ckptkit": {"version": 1, "trainer": "lm"}}, path)
    assert main(["--resume", str(path)]) == 2
    assert capsys.readouterr().err.strip().endswith("was written by the 'lm' trainer, not the retrieval trainer")


def test_fix_epoch_on_an_interrupt_checkpoint_moves_epoch_data_position_and_global_step_together(
    tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from ckptkit.cli import main as cli

    _run(tmp_path, stop_at_micro_step=17)
    path = tmp_path / "interrupted_model_epoch_1_batch_5.pt"
    result = CliRunner().invoke(cli, ["fix-epoch", str(path), "--epoch", "2", "--complete", "--no-backup"])
    assert result.exit_code == 0, result.output
    fixed = torch.load(path, weights_only=True)
    position = fixed["data_position"]
    assert (
        fixed["epoch"],
        position["epoch"],
        position["batch_in_epoch"],
        position["micro_step"],
        fixed["global_step"],
    ) == (2, 2, 0, 0, 12)
