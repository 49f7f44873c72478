"""An HF Trainer folder saved under FSDP or DeepSpeed keeps the model elsewhere than
model.safetensors, where `Trainer._load_from_checkpoint` (and DeepSpeed's engine) find it:
FSDP SHARDED_STATE_DICT writes only accelerate's `pytorch_model_fsdp_0/` DCP folder, FULL_STATE_DICT
`pytorch_model_fsdp.bin`, and DeepSpeed ZeRO-3 (without gathering) only `global_stepN/`.
ckptkit called all three "no model or adapter weights", an error on a healthy checkpoint.
An accelerate save_state folder under FSDP showed no model at all.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

from ckptkit.formats import open_checkpoint
from tests.validation.helpers import codes, only, run

HF = Path(__file__).parents[1] / "fixtures" / "real" / "hf_full" / "checkpoint-8"


def trainer_folder(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """checkpoint-8 without its model.safetensors (and optimizer.pt: the FSDP optimizer is a folder)."""
    folder = shutil.copytree(HF, tmp_path / "checkpoint-8")
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    return folder, weights


def test_fsdp_sharded_weights_are_read_from_the_dcp_folder(tmp_path: Path) -> None:
    folder, weights = trainer_folder(tmp_path)
    # accelerate's save_fsdp_model, SHARDED_STATE_DICT: dist_cp.save({"model": state_dict}, FileSystemWriter(dir))
    dcp.save({"model": weights}, storage_writer=dcp.FileSystemWriter(folder / "pytorch_model_fsdp_0"), no_dist=True)
    ckpt = open_checkpoint(folder)
    assert list(ckpt.model) == list(weights)
    assert all(torch.equal(ckpt.model[k].to_torch(), v) for k, v in weights.items())
    assert ckpt.sources["model"].startswith("pytorch_model_fsdp_0/")
    report = run(folder, deep=True)
    assert not [f for f in report.findings if f.severity.value == "error"], report.findings


def test_fsdp_full_state_dict_weights_are_read(tmp_path: Path) -> None:
    folder, weights = trainer_folder(tmp_path)
    torch.save(weights, folder / "pytorch_model_fsdp.bin")
    ckpt = open_checkpoint(folder)
    assert list(ckpt.model) == list(weights) and ckpt.sources["model"] == "pytorch_model_fsdp.bin"
    assert "folder.missing-weights" not in codes(run(folder))


def test_deepspeed_weights_are_said_to_be_in_its_folder(tmp_path: Path) -> None:
    folder, _ = trainer_folder(tmp_path)
    (folder / "global_step8").mkdir()
    torch.save({"module": {}}, folder / "global_step8" / "mp_rank_00_model_states.pt")
    report = run(folder)
    assert "folder.missing-weights" not in codes(report)
    finding = only(report, "folder.weights-in-deepspeed")
    assert finding.severity.value == "info" and finding.where == "checkpoint-8/global_step8"


def test_a_folder_with_no_weights_anywhere_is_still_an_error(tmp_path: Path) -> None:
    folder, _ = trainer_folder(tmp_path)
    (folder / "some_other_dir").mkdir()
    finding = only(run(folder), "folder.missing-weights")
    assert finding.severity.value == "error"


def test_a_damaged_fsdp_folder_is_named(tmp_path: Path) -> None:
    folder, weights = trainer_folder(tmp_path)
    dcp.save({"model": weights}, checkpoint_id=folder / "pytorch_model_fsdp_0", no_dist=True)
    (folder / "pytorch_model_fsdp_0" / ".metadata").write_bytes(b"\x80\x04garbage")
    finding = only(run(folder), "folder.unreadable-member")
    assert finding.where == "checkpoint-8/pytorch_model_fsdp_0" and "FSDP sharded model weights" in finding.message


ACCELERATE = Path(__file__).parents[1] / "fixtures" / "real" / "accelerate"


def test_an_accelerate_folder_saved_under_fsdp_has_its_model_read(tmp_path: Path) -> None:
    """Accelerator.save_state under FSDP: save_fsdp_model instead of model.safetensors (the
    folder is exempt from the missing-member errors: its model was simply not shown)."""
    folder = shutil.copytree(ACCELERATE, tmp_path / "state")
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    dcp.save({"model": weights}, storage_writer=dcp.FileSystemWriter(folder / "pytorch_model_fsdp_0"), no_dist=True)
    torch.save(weights, folder / "pytorch_model_fsdp_1.bin")       # a second model, FULL_STATE_DICT
    ckpt = open_checkpoint(folder)
    assert list(ckpt.model) == [*weights, *(f"pytorch_model_fsdp_1.{k}" for k in weights)]
    assert all(torch.equal(ckpt.model[k].to_torch(), v) for k, v in weights.items())
    assert not [f for f in run(folder).findings if f.severity.value == "error"]
