from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from ckptkit.cli import main


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_fix_epoch_dry_run_prints_the_diff_and_exits_0_without_writing(training_state: Path) -> None:
    before = training_state.read_bytes()
    result = _run("fix-epoch", training_state, "--epoch", "1", "--complete", "--dry-run")
    assert result.exit_code == 0
    assert "-step: 1000\n+step: 1270" in result.output
    assert "epoch 1 INCOMPLETE: 1000/1270 batches (78.7%)  ->  epoch 1 complete" in result.output
    assert "scheduler scheduler_state_dict.last_epoch = 2 was left as is" in result.output
    assert result.output.rstrip().endswith("dry run, nothing written")
    assert training_state.read_bytes() == before


def test_fix_epoch_writes_keeps_a_backup_and_the_second_run_says_nothing_to_do(training_state: Path) -> None:
    first = _run("fix-epoch", training_state, "--epoch", "1")
    assert first.exit_code == 0
    assert f"original kept at {training_state}.bak" in first.output
    second = _run("fix-epoch", training_state, "--epoch", "1", "--json")
    assert second.exit_code == 0
    data = json.loads(second.output)
    assert (data["status"], data["written"], data["changes"]) == ("already consistent, nothing written", False, [])


def test_fix_epoch_json_lists_each_change_with_before_and_after(training_state: Path) -> None:
    result = _run("fix-epoch", training_state, "--epoch", "3", "--step", "10", "--no-backup", "--json")
    data = json.loads(result.output)
    assert result.exit_code == 0 and data["backups"] == []
    assert [(c["key"], c["before"], c["after"]) for c in data["changes"]] == [("epoch", 1, 3), ("step", 1000, 10)]
    assert torch.load(training_state, weights_only=True)["epoch"] == 3


def test_complete_and_step_together_are_a_usage_error(training_state: Path) -> None:
    result = _run("fix-epoch", training_state, "--epoch", "1", "--complete", "--step", "3")
    assert result.exit_code == 2 and "either --complete or --step" in result.output


def test_bad_input_is_one_line_exit_2_and_nothing_modified(samples: Path) -> None:
    path = samples / "recsys" / "models" / "checkpoint-recent.pth"
    before = path.read_bytes()
    result = _run("fix-epoch", path, "--epoch", "3", "--step", "5")
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith(f"ckptkit: error: {path}: recsys layout: cannot record a position inside an epoch")
    assert path.read_bytes() == before and not Path(f"{path}.bak").exists()


def test_repair_without_fix_lists_the_fixes_and_exits_1(samples: Path) -> None:
    path = samples / "experiment" / "checkpoints" / "best_model.pt"
    result = _run("repair", path)
    assert result.exit_code == 1
    assert "-config: pickled scripts.make_seed_samples.ExperimentConfig (5 fields)" in result.output
    assert f"apply with: ckptkit repair {path} --fix security.pickled-class" in result.output


def test_repair_with_fix_writes_to_the_given_backup(samples: Path, tmp_path: Path) -> None:
    path = samples / "experiment" / "checkpoints" / "best_model.pt"
    backup = tmp_path / "best_model.orig.pt"
    result = _run("repair", path, "--fix", "security.pickled-class", "--backup", backup)
    assert result.exit_code == 0 and backup.exists()
    assert torch.load(path, weights_only=True)["config"]["max_steps"] == 2000


def test_repair_of_a_clean_file_exits_0(samples: Path) -> None:
    result = _run("repair", samples / "recsys" / "models" / "checkpoint-recent.pth")
    assert result.exit_code == 0 and "already consistent, nothing written" in result.output


def test_an_unknown_fix_code_is_a_usage_error(samples: Path) -> None:
    result = _run("repair", samples / "legacy" / "model_legacy.pt", "--fix", "nope")
    assert result.exit_code == 2 and "Invalid value for '--fix'" in result.output


def test_backup_and_no_backup_together_are_a_usage_error(training_state: Path, tmp_path: Path) -> None:
    result = _run("fix-epoch", training_state, "--epoch", "1", "--backup", tmp_path / "b", "--no-backup")
    assert result.exit_code == 2 and "either --backup PATH or --no-backup" in result.output
    assert torch.load(training_state, weights_only=True)["step"] == 1000


def test_a_trainer_folder_dry_run_names_the_folder_rename_it_cannot_do(tmp_path: Path) -> None:
    import shutil

    from tests.repair.conftest import REAL

    folder = tmp_path / "checkpoint-4"
    shutil.copytree(REAL / "hf_full" / "checkpoint-4", folder)
    result = _run("fix-epoch", folder, "--epoch", "1", "--dry-run")
    assert result.exit_code == 0
    assert ("epoch 0.8889 (trainer_state.json), global step 4  ->  "
            "epoch 1 (trainer_state.json), global step 5") in result.output
    assert "-global_step: 4\n+global_step: 5" in result.output
    assert f"mv '{folder}' '{tmp_path / 'checkpoint-5'}'" in result.output
