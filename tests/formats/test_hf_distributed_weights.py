"""An HF Trainer folder saved under FSDP or DeepSpeed keeps the model elsewhere than
model.safetensors, where `Trainer._load_from_checkpoint` (and DeepSpeed's engine) find it:
FSDP SHARDED_STATE_DICT writes only accelerate's `pytorch_model_fsdp_0/` DCP folder, FULL_STATE_DICT
`pytorch_model_fsdp.bin`, and DeepSpeed ZeRO-3 (without gathering) only `global_stepN/`.
ckptkit called all three "no model or adapter weights", an error on a healthy checkpoint.
An accelerate save_state folder under FSDP showed no model at all.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

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
    (folder / "latest").write_text("global_step8")      # DeepSpeed's save_checkpoint writes the tag there
    report = run(folder)
    assert "folder.missing-weights" not in codes(report) and "folder.missing-member" not in codes(report)
    finding = only(report, "folder.weights-in-deepspeed")
    assert finding.severity.value == "info" and finding.where == "checkpoint-8/global_step8"


def test_a_deepspeed_checkpoint_resumes_the_tag_its_latest_file_names(tmp_path: Path) -> None:
    """deepspeed_load_checkpoint calls engine.load_checkpoint(folder) with no tag: DeepSpeed reads it
    from `latest`, and without that file loads nothing, so the Trainer raises '[deepspeed] failed to
    resume from checkpoint'; a tag naming a folder that is not there fails to load as well."""
    folder, _ = trainer_folder(tmp_path)
    for step in (8, 10):
        (folder / f"global_step{step}").mkdir()
    finding = only(run(folder), "folder.missing-member")
    assert finding.severity.value == "error" and finding.where == "checkpoint-8/latest"
    assert "no 'latest' file beside DeepSpeed's global_step8, global_step10/" in finding.message
    assert finding.fix == f"echo global_step10 > {folder / 'latest'} (the tag of the folder to resume)"
    (folder / "latest").write_text("global_step6\n")
    finding = only(run(folder), "folder.missing-member")
    assert "names the tag 'global_step6', but this folder holds global_step8, global_step10/" in finding.message
    (folder / "latest").write_text("global_step10\n")
    assert "folder.missing-member" not in codes(run(folder))


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


def _fsdp_trainer_folder(tmp_path: Path, config_change: dict[str, int] | None = None) -> tuple[Path, dict[str, Any]]:
    """checkpoint-8 as the Trainer writes it under FSDP with SHARDED_STATE_DICT: save_fsdp_model's
    pytorch_model_fsdp_0/ and save_fsdp_optimizer's optimizer_0/ ({"optimizer": state keyed by
    parameter name, from get_optimizer_state_dict}), and no model.safetensors or optimizer.pt. The
    optimizer is the one optimizer.pt holds, in the Trainer's two parameter groups (decay first);
    `config_change`: its state is that of a model of another size instead."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.trainer_pt_utils import get_parameter_names

    folder, weights = trainer_folder(tmp_path)
    config = AutoConfig.from_pretrained(folder)
    for key, value in (config_change or {}).items():
        setattr(config, key, value)
    model = AutoModelForCausalLM.from_config(config)
    saved = torch.load(folder / "optimizer.pt", weights_only=True)
    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], ["bias", "layernorm", "rmsnorm"]))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for n, p in named if n in decay]},
                                   {"params": [p for n, p in named if n not in decay]}])
    if config_change:
        model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
        optimizer.step()
    else:
        model.load_state_dict(weights, strict=False)
        optimizer.load_state_dict(saved)
    (folder / "optimizer.pt").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # "no process group": one process on purpose
        state = get_optimizer_state_dict(model, optimizer)
        dcp.save({"model": weights}, storage_writer=dcp.FileSystemWriter(folder / "pytorch_model_fsdp_0"), no_dist=True)
        dcp.save({"optimizer": state}, storage_writer=dcp.FileSystemWriter(folder / "optimizer_0"), no_dist=True)
    return folder, state


def test_the_fsdp_sharded_optimizer_of_a_trainer_folder_is_read_and_checked(tmp_path: Path) -> None:
    """The optimizer was not read (no optimizer.pt), so nothing checked it against the model."""
    folder, state = _fsdp_trainer_folder(tmp_path)
    ckpt = open_checkpoint(folder)
    assert ckpt.sources["optimizer"].startswith("optimizer_0/")
    assert list(ckpt.optimizer["state"]) == list(state["state"]) and len(state["state"]) == 28
    key = "transformer.h.0.attn.c_attn.weight"
    assert torch.equal(ckpt.optimizer["state"][key]["exp_avg"].to_torch(), state["state"][key]["exp_avg"])
    assert [len(g["params"]) for g in ckpt.optimizer["param_groups"]] == [10, 18]
    report = run(folder, deep=True)
    assert not [f for f in report.findings if f.severity.value in ("error", "warning")], report.findings


def test_an_fsdp_optimizer_of_another_model_is_an_error(tmp_path: Path) -> None:
    folder, _ = _fsdp_trainer_folder(tmp_path, {"n_embd": 64})
    finding = only(run(folder), "optimizer.param-set-mismatch")
    assert finding.severity.value == "error"


def test_an_accelerate_folder_saved_under_fsdp_has_its_optimizer_read(tmp_path: Path) -> None:
    """save_fsdp_optimizer keys the state by parameter name (get_optimizer_state_dict)."""
    folder = shutil.copytree(ACCELERATE, tmp_path / "state")
    names = list(load_file(folder / "model.safetensors"))     # the parameters, in model.parameters() order
    saved = torch.load(folder / "optimizer.bin", weights_only=True)
    state = {"state": {names[i]: entry for i, entry in saved["state"].items()},
             "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]]}
    (folder / "optimizer.bin").unlink()
    dcp.save({"optimizer": state}, storage_writer=dcp.FileSystemWriter(folder / "optimizer_0"), no_dist=True)
    ckpt = open_checkpoint(folder)
    assert ckpt.sources["optimizer"].startswith("optimizer_0/")
    assert ckpt.optimizer["param_groups"][0]["params"] == state["param_groups"][0]["params"]
    assert torch.equal(ckpt.optimizer["state"][names[0]]["exp_avg"].to_torch(), saved["state"][0]["exp_avg"])
    assert not [f for f in run(folder).findings if f.severity.value in ("error", "warning")]
