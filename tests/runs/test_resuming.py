"""`ckptkit resume`: which checkpoint, which trainer, which command; refusals with one line."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ckptkit.cli import main as cli
from ckptkit.core.errors import CorruptCheckpointError, ResumeRefusedError
from ckptkit.runs.resuming import plan_resume
from scripts.make_seed_samples import write_samples
from trainers.lm import main as train

FLAGS = ["--config", "tiny", "--max-steps", "8", "--save-interval", "4", "--eval-interval", "4"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("resume") / "run"
    assert train([*FLAGS, "--out", str(out)]) == 0
    return out


def test_a_run_directory_resumes_from_its_most_advanced_checkpoint_with_the_lm_trainer(run_dir: Path) -> None:
    plan = plan_resume(run_dir, ("--extend-steps", "12"))
    assert plan.checkpoint.name in ("final_model.pt", "checkpoint_step_8.pt")
    assert plan.progress.global_step == 8
    assert plan.trainer == "lm"
    assert plan.command[1:] == ["-m", "trainers.lm", "--resume", str(plan.checkpoint), "--extend-steps", "12"]


def test_a_single_checkpoint_is_used_as_given(run_dir: Path) -> None:
    plan = plan_resume(run_dir / "checkpoint_step_4.pt")
    assert plan.checkpoint == run_dir / "checkpoint_step_4.pt"
    assert plan.progress.global_step == 4


def test_a_truncated_checkpoint_is_refused_before_any_trainer_runs(run_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint_step_4.pt"
    bad.write_bytes((run_dir / "checkpoint_step_4.pt").read_bytes()[:5000])
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        plan_resume(bad)


def test_a_checkpoint_no_bundled_trainer_wrote_is_refused_by_name(tmp_path: Path) -> None:
    path = write_samples(tmp_path)["final_model.pt"]
    with pytest.raises(ResumeRefusedError, match="not written by a bundled ckptkit trainer"):
        plan_resume(path)


def test_a_folder_without_a_whole_checkpoint_is_refused_and_points_to_ls(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(ResumeRefusedError, match="ckptkit ls"):
        plan_resume(tmp_path)


def test_cli_dry_run_prints_the_command_and_trains_nothing(run_dir: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    before = sorted(p.name for p in run.iterdir())
    result = CliRunner().invoke(cli, ["resume", str(run), "--dry-run", "--", "--extend-steps", "12"])
    assert result.exit_code == 0, result.output
    assert "with the 'lm' trainer" in result.output
    assert result.output.startswith(f"would resume {run}")   # a dry run resumes nothing: no "resuming"
    assert "$ python -m trainers.lm --resume" in result.output and "--extend-steps 12" in result.output
    assert sorted(p.name for p in run.iterdir()) == before


def test_cli_resume_runs_the_trainer_and_passes_its_exit_code(run_dir: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    result = CliRunner().invoke(cli, ["resume", str(run), "--", "--extend-steps", "10"])
    assert result.exit_code == 0, result.output
    final = torch.load(run / "final_model.pt", weights_only=True)
    assert final["global_step"] == 10


def test_cli_refusal_is_one_line_with_exit_2(tmp_path: Path) -> None:
    path = write_samples(tmp_path)["best_model.pt"]
    result = CliRunner().invoke(cli, ["resume", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "not written by a bundled ckptkit trainer" in result.output
