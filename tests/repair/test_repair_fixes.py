from __future__ import annotations

import json
import shutil
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from ckptkit.core.errors import CkptkitError
from ckptkit.formats import open_checkpoint
from ckptkit.repair import repair_checkpoint
from ckptkit.validating import validate_path
from tests.repair.conftest import REAL


def _records(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n.split("/data/", 1)[1]: zf.read(n) for n in zf.namelist() if "/data/" in n}


def test_listing_without_fix_names_the_applicable_fixes_and_writes_nothing(samples: Path) -> None:
    path = samples / "experiment" / "checkpoints" / "best_model.pt"
    before = path.read_bytes()
    result = repair_checkpoint(path)
    assert result.plan.fixes == ["security.pickled-class"]
    assert [(c.key, c.after) for c in result.plan.changes] == [
        ("config", {"d_model": 32, "n_layers": 2, "batch_size": 4, "max_steps": 2000, "save_interval": 500})]
    assert not result.written and path.read_bytes() == before


def test_pickled_config_becomes_a_dict_and_the_file_loads_with_weights_only(samples: Path) -> None:
    path = samples / "experiment" / "checkpoints" / "best_model.pt"
    records = _records(path)
    result = repair_checkpoint(path, ["security.pickled-class"])
    assert result.written
    tree = torch.load(path, weights_only=True)
    assert tree["config"] == {"d_model": 32, "n_layers": 2, "batch_size": 4, "max_steps": 2000, "save_interval": 500}
    assert tree["global_step"] == 500
    assert _records(path) == records
    assert [f.code for f in validate_path(path).findings if f.code.startswith("security.")] == []
    assert repair_checkpoint(path, ["security.pickled-class"]).status == "already consistent, nothing written"


def test_module_prefixes_are_stripped_from_model_keys_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    wrapped = OrderedDict((f"module._orig_mod.{k}", v) for k, v in model.state_dict().items())
    path = tmp_path / "ddp.pth"
    torch.save({"model_state_dict": wrapped, "optimizer_state_dict": opt.state_dict(), "epoch": 3}, path)
    records = _records(path)
    result = repair_checkpoint(path, ["compat.module-prefix"])
    assert [(c.before, c.after) for c in result.plan.changes][0] == ("module._orig_mod.0.weight", "0.weight")
    tree = torch.load(path, weights_only=True)
    assert list(tree["model_state_dict"]) == list(model.state_dict())
    for key, tensor in model.state_dict().items():
        assert torch.equal(tree["model_state_dict"][key], tensor)
    assert tree["optimizer_state_dict"]["state"][0]["momentum_buffer"].shape == (3, 4)
    assert tree["epoch"] == 3 and _records(path) == records


def test_keys_with_a_prefix_on_only_some_entries_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pth"
    torch.save({"module.a": torch.zeros(2), "b": torch.ones(2)}, path)
    result = repair_checkpoint(path, ["compat.module-prefix"])
    assert not result.written and "only 1 of 2 keys" in result.plan.cannot_fix[0]


def test_missing_epoch_is_restored_from_the_retrieval_file_name_and_history(tmp_path: Path) -> None:
    path = tmp_path / "optimized_model_epoch_4_recall_0.2000.pt"
    torch.save({"model_state_dict": {"w": torch.zeros(2)}, "recall_at_10": 0.2,
                "train_losses": [0.9, 0.8, 0.7, 0.6]}, path)
    result = repair_checkpoint(path, ["counters.missing-epoch"])
    assert torch.load(path, weights_only=True)["epoch"] == 4
    assert open_checkpoint(path).progress.epochs_completed == 4
    assert "from the file name (epoch_4_recall_0.2000) and the length of 'train_losses'" in result.plan.notes[0]


def test_missing_epoch_with_disagreeing_evidence_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "optimized_model_epoch_4_recall_0.2000.pt"
    torch.save({"model_state_dict": {"w": torch.zeros(2)}, "recall_at_10": 0.2, "train_losses": [0.9, 0.8]}, path)
    before = path.read_bytes()
    result = repair_checkpoint(path, ["counters.missing-epoch"])
    assert not result.written and "disagrees" in result.plan.cannot_fix[0] and path.read_bytes() == before


def test_hf_folder_global_step_is_resynced_with_the_folder_name(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-4"
    shutil.copytree(REAL / "hf_full" / "checkpoint-4", folder)
    state = json.loads((folder / "trainer_state.json").read_text())
    state["global_step"] = 3
    (folder / "trainer_state.json").write_text(json.dumps(state))
    listed = repair_checkpoint(folder)
    assert listed.plan.fixes == ["counters.hf-step-mismatch"] and not listed.written
    result = repair_checkpoint(folder, ["counters.hf-step-mismatch"])
    assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == 4
    assert json.loads((folder / "trainer_state.json.bak").read_text())["global_step"] == 3
    assert result.written


def test_an_unknown_fix_code_is_refused(samples: Path) -> None:
    with pytest.raises(CkptkitError, match="no automatic fix for counters.nope"):
        repair_checkpoint(samples / "legacy" / "model_legacy.pt", ["counters.nope"])


def test_a_file_that_is_one_pickled_object_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "training_args.bin"
    shutil.copy(REAL / "hf_full" / "checkpoint-4" / "training_args.bin", path)
    result = repair_checkpoint(path, ["security.pickled-class"])
    assert not result.written
    assert "one pickled transformers.training_args.TrainingArguments" in result.plan.cannot_fix[0]


def test_a_trainer_folder_not_named_by_step_takes_global_step_from_its_log(tmp_path: Path) -> None:
    folder = tmp_path / "last"
    shutil.copytree(REAL / "hf_full" / "checkpoint-8", folder)
    state = json.loads((folder / "trainer_state.json").read_text())
    logged = max(e["step"] for e in state["log_history"])
    state["global_step"] = logged - 2
    (folder / "trainer_state.json").write_text(json.dumps(state))
    result = repair_checkpoint(folder, ["counters.hf-step-mismatch"], keep_backup=False)
    assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == logged
    assert "log_history reaches step" in result.plan.notes[0]


def test_the_compile_prefix_code_strips_orig_mod(tmp_path: Path) -> None:
    path = tmp_path / "compiled.pth"
    torch.save({"model_state_dict": {"_orig_mod.fc.weight": torch.ones(2, 2)}, "epoch": 0}, path)
    repair_checkpoint(path, ["compat.compile-prefix"], keep_backup=False)
    assert list(torch.load(path, weights_only=True)["model_state_dict"]) == ["fc.weight"]
