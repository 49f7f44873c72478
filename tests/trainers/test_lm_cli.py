"""`python -m trainers.lm`: resume rules, messages, exit codes, and a real SIGKILL mid-save."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ckptkit.storage.manifest import read_manifest
from trainers.lm import main

REPO_ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--config", "tiny", "--max-steps", "16", "--grad-accum", "2", "--save-interval", "5", "--eval-interval", "5"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([*FLAGS, "--out", str(out)]) == 0
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_resuming_a_finished_run_says_so_and_exits_2_instead_of_completing_immediately(
    finished_run: Path, capsys
) -> None:
    assert main(["--resume", str(finished_run)]) == 2
    err = capsys.readouterr().err
    assert (
        f"error: {finished_run / 'final_model.pt'} is a finished run: step 16 of max_steps 16. Nothing to resume."
        in err
    )
    assert "To train further: --extend-steps N (N > 16)." in err


def test_extend_steps_continues_a_finished_run_to_the_new_total(finished_run: Path, tmp_path: Path, capsys) -> None:
    run = _copy(finished_run, tmp_path)
    assert main(["--resume", str(run), "--extend-steps", "20"]) == 0
    out = capsys.readouterr().out
    assert "note: extending the run from max_steps 16 to 20" in out
    final = torch.load(run / "final_model.pt", weights_only=True)
    assert final["global_step"] == 20 and final["config"]["max_steps"] == 20
    assert [h["step"] for h in final["train_history"]] == list(range(1, 21))


def test_extend_steps_not_beyond_the_checkpoint_is_an_error(finished_run: Path, capsys) -> None:
    assert main(["--resume", str(finished_run), "--extend-steps", "16"]) == 2
    assert "--extend-steps 16 is not beyond the checkpoint's step 16" in capsys.readouterr().err


def test_flags_that_disagree_with_the_checkpoint_are_named_and_the_run_keeps_its_config(
    finished_run: Path, tmp_path: Path, capsys
) -> None:
    run = _copy(finished_run, tmp_path)
    code = main(["--resume", str(run / "checkpoint_step_10.pt"), "--config", "small", "--grad-accum", "4",
                 "--save-interval", "3", "--max-steps", "99"])
    assert code == 0
    out = capsys.readouterr().out
    assert (
        f"resuming from {run / 'checkpoint_step_10.pt'} (verified: manifest size and CRC-32, weights-only load)" in out
    )
    assert "  at epoch 2 | batch 9/11 (81.8%) | step 10/16" in out
    assert "note: --config small ignored: this run is 'tiny' (the config comes from the checkpoint)" in out
    assert "note: --grad-accum 4 ignored: the run uses 2" in out
    assert "note: --max-steps 99 ignored: the run uses 16; to train longer use --extend-steps" in out
    assert "note: --save-interval 3 used (the run had 5)" in out
    assert torch.load(run / "final_model.pt", weights_only=True)["config"]["grad_accum"] == 2
    assert read_manifest(run / "checkpoint_step_12.pt").global_step == 12  # the new save interval


def test_a_fresh_run_into_a_directory_holding_a_run_is_refused(finished_run: Path, capsys) -> None:
    assert main([*FLAGS, "--out", str(finished_run)]) == 2
    assert (
        f"{finished_run} already holds a run's checkpoints; continue it with --resume {finished_run}"
        in capsys.readouterr().err
    )


def test_a_corrupt_checkpoint_is_refused_with_one_line_and_exit_2(finished_run: Path, tmp_path: Path, capsys) -> None:
    run = _copy(finished_run, tmp_path)
    os.truncate(run / "checkpoint_step_10.pt", 5000)
    assert main(["--resume", str(run / "checkpoint_step_10.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"error: {run / 'checkpoint_step_10.pt'}: does not match its manifest: "
        "checkpoint_step_10.pt: 5000 bytes on disk"
    )
    assert len(err.splitlines()) == 1


def test_a_run_killed_right_after_submitting_a_save_resumes_to_the_uninterrupted_bytes(
    finished_run: Path, tmp_path: Path, capsys
) -> None:
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    # micro-step 20 completes optimizer step 10, whose checkpoint is being written when the kill lands
    done = subprocess.run(
        [sys.executable, "-m", "trainers.lm", *FLAGS, "--out", str(killed), "--kill-at-micro-step", "20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert "finished" not in done.stdout and not (killed / "final_model.pt").exists()
    assert main(["--resume", str(killed)]) == 0
    resumed_from = capsys.readouterr().out.splitlines()[0]
    assert resumed_from.startswith(f"resuming from {killed}/checkpoint_step_") and "_micro_" not in resumed_from
    assert (killed / "final_model.pt").read_bytes() == (finished_run / "final_model.pt").read_bytes()


def test_sigterm_saves_an_interrupt_checkpoint_at_the_current_micro_step_and_exits_143(tmp_path: Path) -> None:
    import trainers.lm as loop

    run = tmp_path / "run"
    original = loop.LMRun._micro_step

    def micro_step_then_sigterm(self, batch):  # as if the scheduler preempted us during batch 9
        original(self, batch)
        if self.progress.position.batches_consumed == 9:
            os.kill(os.getpid(), signal.SIGTERM)

    loop.LMRun._micro_step = micro_step_then_sigterm
    try:
        assert main([*FLAGS, "--out", str(run)]) == 128 + signal.SIGTERM
    finally:
        loop.LMRun._micro_step = original
    saved = torch.load(run / "checkpoint_step_4_micro_1.pt", weights_only=True)
    assert saved["data_position"]["batch_in_epoch"] == 9 and saved["accumulation"]["micro_step"] == 1


def test_a_checkpoint_from_another_trainer_is_refused_by_name(tmp_path: Path, capsys) -> None:
    path = tmp_path / "best_model.pt"
    torch.save({"model_state_dict": {}, "optimizer_state_dict": {}, "global_step": 3, "config": {"d_model": 64},
                "ckptkit": {"version": 1, "trainer": "recsys"}}, path)
    assert main(["--resume", str(path)]) == 2
    assert capsys.readouterr().err.strip().endswith("was written by the 'recsys' trainer, not the LM trainer")
