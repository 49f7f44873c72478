"""What `Accelerator.load_state` will not find in a save_state folder (real fixture: accelerate 1.15).

load_state loads the file of every model, optimizer and scheduler the script prepared, with no
existence check: removing optimizer.bin, scheduler.bin or model.safetensors from the fixture each
makes it raise FileNotFoundError (run by hand with accelerate 1.15; random_states_0.pkl missing is
only logged). ckptkit called every one of those folders clean.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ckptkit.core.checkpoint import Severity
from ckptkit.formats import open_checkpoint

REAL = Path(__file__).parent.parent / "fixtures" / "real" / "accelerate"


def _findings(folder: Path) -> list[tuple[str, Severity, str, str]]:
    return [(f.code, f.severity, f.where, f.message) for f in open_checkpoint(folder).findings]


def _without(tmp_path: Path, *names: str, renames: dict[str, str] | None = None) -> Path:
    folder = tmp_path / "state"
    shutil.copytree(REAL, folder)
    for name in names:
        (folder / name).unlink()
    for old, new in (renames or {}).items():
        (folder / old).rename(folder / new)
    return folder


def test_the_real_folder_has_no_findings() -> None:
    assert _findings(REAL) == []


@pytest.mark.parametrize("name, code, severity, says", [
    ("optimizer.bin", "folder.missing-optimizer", Severity.ERROR,
     "no optimizer.bin though scheduler.bin is here: a scheduler is saved with the optimizer it drives, so the "
     "folder lost it; Accelerator.load_state raises FileNotFoundError for it"),
    ("model.safetensors", "folder.missing-weights", Severity.ERROR,
     "no model.safetensors or pytorch_model.bin: Accelerator.load_state raises FileNotFoundError when it loads "
     "the model the script prepared"),
    ("scheduler.bin", "folder.missing-scheduler", Severity.WARNING,
     "no scheduler.bin, though an LR scheduler drove the optimizer (its param groups hold the scheduler's "
     "initial_lr): if the script prepares that scheduler, Accelerator.load_state raises FileNotFoundError"),
    ("random_states_0.pkl", "folder.missing-rng", Severity.INFO,
     "no random_states_*.pkl: load_state goes on without it"),
])
def test_a_member_load_state_needs_is_named(tmp_path: Path, name: str, code: str, severity: Severity,
                                            says: str) -> None:
    [(got_code, got_severity, where, message)] = _findings(_without(tmp_path, name))
    assert (got_code, got_severity, where) == (code, severity, f"state/{name}")
    assert message.startswith(says)


def test_no_optimizer_and_no_scheduler_is_a_warning_only(tmp_path: Path) -> None:
    """A script that prepared no optimizer saves none; one that does prepare one cannot load this."""
    [(code, severity, _, message)] = _findings(_without(tmp_path, "optimizer.bin", "scheduler.bin"))
    assert (code, severity) == ("folder.missing-optimizer", Severity.WARNING)
    assert message == ("no optimizer.bin: when the training script prepares an optimizer, Accelerator.load_state "
                       "raises FileNotFoundError for it")


def test_a_gap_in_the_numbered_members_is_an_error(tmp_path: Path) -> None:
    folder = _without(tmp_path, renames={"optimizer.bin": "optimizer_1.bin",
                                         "model.safetensors": "model_1.safetensors"})
    found = {(code, where) for code, _, where, _ in _findings(folder)}
    assert found == {("folder.missing-optimizer", "state/optimizer.bin"),
                     ("folder.missing-weights", "state/model.safetensors")}
    messages = [m for _, _, _, m in _findings(folder)]
    assert any(m.startswith("no optimizer.bin though optimizer_1.bin is here: save_state writes one per prepared "
                            "optimizer") for m in messages)


@pytest.mark.parametrize("layout", ["pytorch_model/", "pytorch_model_fsdp_0/", "pytorch_model_fsdp.bin"])
def test_fsdp_and_deepspeed_layouts_expect_no_model_safetensors_or_optimizer_bin(tmp_path: Path, layout: str) -> None:
    """Under FSDP accelerate writes pytorch_model_fsdp.bin or pytorch_model_fsdp_0/ (and optimizer_0/),
    under DeepSpeed one pytorch_model/ folder holding model and optimizer (Accelerator.save_state)."""
    folder = _without(tmp_path, "model.safetensors", "optimizer.bin")
    if layout == "pytorch_model_fsdp_0/":     # save_fsdp_model, SHARDED_STATE_DICT: {"model": ...} through DCP
        import torch.distributed.checkpoint as dcp
        from safetensors.torch import load_file
        dcp.save({"model": load_file(REAL / "model.safetensors")}, checkpoint_id=folder / layout, no_dist=True)
    elif layout.endswith("/"):
        (folder / layout).mkdir()
    else:
        (folder / layout).write_bytes((REAL / "model.safetensors").read_bytes())
    assert [code for code, *_ in _findings(folder)] == []
