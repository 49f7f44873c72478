"""Folder checkpoints with problems: findings when still usable, one CkptkitError when not."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ckptkit.core.errors import CorruptCheckpointError, NotACheckpointError
from ckptkit.formats import open_checkpoint
from tests.run_builders import REAL, hf_checkpoint, write_dcp


def codes(ckpt) -> list[tuple[str, str]]:
    return [(f.code, f.severity.value) for f in ckpt.findings if f.code != "folder.pickled-objects"]


def test_checkpoint_without_trainer_state_is_read_with_an_error_saying_resume_restarts_at_step_0(
        tmp_path: Path) -> None:
    folder = hf_checkpoint(tmp_path / "checkpoint-500", 500, 0.4)
    (folder / "trainer_state.json").unlink()
    ckpt = open_checkpoint(folder)
    assert ckpt.format == "hf-trainer"
    assert codes(ckpt) == [("folder.missing-trainer-state", "error")]
    assert "resume would restart at step 0" in ckpt.findings[0].message
    assert not ckpt.progress.known


def test_sharded_index_pointing_to_a_missing_shard_is_an_error_finding(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(REAL / "hf_sharded", folder)
    (folder / "model-00002-of-00002.safetensors").unlink()
    ckpt = open_checkpoint(folder)
    [finding] = ckpt.findings
    assert finding.code == "folder.missing-shard" and finding.where == "model/model.safetensors.index.json"
    assert "'model-00002-of-00002.safetensors', which is missing" in finding.message
    assert 0 < len(ckpt.model) < 28


def test_truncated_optimizer_member_is_an_error_finding_and_the_rest_is_still_read(tmp_path: Path) -> None:
    folder = hf_checkpoint(tmp_path / "checkpoint-8", 8, 1.6)
    data = (folder / "optimizer.pt").read_bytes()
    (folder / "optimizer.pt").write_bytes(data[: len(data) // 2])
    ckpt = open_checkpoint(folder)
    assert codes(ckpt) == [("folder.unreadable-member", "error")]
    [finding] = [f for f in ckpt.findings if f.code == "folder.unreadable-member"]
    assert finding.where == "checkpoint-8/optimizer.pt"
    assert finding.message.startswith("optimizer file cannot be read: zip archive is truncated")
    assert ckpt.optimizer is None and ckpt.progress.global_step == 8 and len(ckpt.model) == 28


def test_empty_folder_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(NotACheckpointError, match="a folder, but no checkpoint format"):
        open_checkpoint(tmp_path)


def test_dcp_folder_with_damaged_metadata_is_unusable(tmp_path: Path) -> None:
    folder = tmp_path / "dcp"
    shutil.copytree(REAL / "dcp", folder)
    meta = (folder / ".metadata").read_bytes()
    (folder / ".metadata").write_bytes(meta[:200])
    with pytest.raises(CorruptCheckpointError, match=r"\.metadata: DCP \.metadata is damaged"):
        open_checkpoint(folder)


def test_dcp_folder_missing_a_rank_file_lists_the_tensors_and_reports_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "dcp"
    shutil.copytree(REAL / "dcp", folder)
    (folder / "__0_0.distcp").unlink()
    ckpt = open_checkpoint(folder)
    assert codes(ckpt) == [("dcp.missing-file", "error")]
    assert ckpt.model["0.weight"].shape == (16, 8)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcp_written_here_reads_back_shapes_dtypes_and_values(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 3).to(torch.bfloat16)
    write_dcp(tmp_path / "ckpt", {"model": {"w": weight, "b": torch.arange(4)}, "epoch": 2, "global_step": 40})
    ckpt = open_checkpoint(tmp_path / "ckpt")
    assert ckpt.model["w"].describe() == "bfloat16[6, 3]" and ckpt.model["b"].describe() == "int64[4]"
    assert torch.equal(ckpt.model["w"].to_torch(), weight)
    assert (ckpt.progress.global_step, ckpt.progress.epochs_completed) == (40, 2)


def test_folder_with_trainer_state_only_reports_missing_weights_and_optimizer(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 3, "epoch": 1.0, "max_steps": 6}))
    ckpt = open_checkpoint(folder)
    assert codes(ckpt) == [("folder.missing-weights", "error"), ("folder.missing-optimizer", "warning"),
                           ("folder.missing-rng", "info")]
    assert ckpt.progress.global_step == 3


def test_trainer_state_that_is_not_json_is_an_error_finding(tmp_path: Path) -> None:
    folder = hf_checkpoint(tmp_path / "checkpoint-4", 4, 0.8)
    (folder / "trainer_state.json").write_text('{"global_step": 4,')
    ckpt = open_checkpoint(folder)
    assert codes(ckpt) == [("folder.unreadable-member", "error")]
    [finding] = [f for f in ckpt.findings if f.code == "folder.unreadable-member"]
    assert finding.where == "checkpoint-4/trainer_state.json"
    assert not ckpt.progress.known


def test_hf_progress_without_a_way_to_count_steps_per_epoch_says_the_epoch_is_incomplete(tmp_path: Path) -> None:
    # max_steps is not a multiple of num_train_epochs and no log entry falls on an epoch boundary.
    folder = hf_checkpoint(tmp_path / "checkpoint-7", 7, 1.4, max_steps=21, num_train_epochs=2)
    ckpt = open_checkpoint(folder)
    p = ckpt.progress
    assert (p.epochs_completed, p.epoch_complete, p.steps_per_epoch, p.step_in_epoch) == (1, False, None, None)
    assert p.describe() == "epoch 2 INCOMPLETE (position in it unknown), global step 7/21"


def test_multi_rank_rng_files_and_an_amp_scaler_are_read_as_sections(tmp_path: Path) -> None:
    folder = hf_checkpoint(tmp_path / "checkpoint-4", 4, 0.8)
    (folder / "rng_state.pth").rename(folder / "rng_state_0.pth")
    shutil.copy(folder / "rng_state_0.pth", folder / "rng_state_1.pth")
    torch.save({"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                "_growth_tracker": 3}, folder / "scaler.pt")
    ckpt = open_checkpoint(folder)
    assert sorted(ckpt.rng) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert ckpt.scaler["scale"] == 65536.0 and ckpt.sources["scaler"] == "scaler.pt"


def test_dcp_data_files_without_metadata_are_an_unfinished_save_for_every_command(tmp_path: Path) -> None:
    """DCP writes .metadata last: validate said only "a folder, but no checkpoint format ckptkit
    knows", while ls already said the save did not finish."""
    from click.testing import CliRunner

    from ckptkit.cli import main

    folder = tmp_path / "step_300"
    folder.mkdir()
    shutil.copy(REAL / "dcp" / "__0_0.distcp", folder / "__0_0.distcp")
    for command in ("validate", "inspect"):
        result = CliRunner().invoke(main, [command, str(folder)])
        assert result.exit_code == 2
        assert result.output.strip() == (f"ckptkit: error: {folder}: DCP data files without .metadata: the save did "
                                         "not finish (torch.distributed.checkpoint writes .metadata last, after every "
                                         "rank's data); resume from an earlier checkpoint")
