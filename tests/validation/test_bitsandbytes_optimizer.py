"""bitsandbytes optimizer state (the LlamaRec LLM ranker trains with optim="paged_adamw_32bit"),
from the real library (tests/fixtures/real/hf_lora_bnb, bnb_8bit; scripts/make_real_fixtures.py).

bitsandbytes keeps its buffers as state1/state2, nested under "__bnb_optimizer_quant_state__"
since 0.48. ckptkit once saw no state there: inspect said "Adam-family (no state yet)", and an
optimizer built for other parameters than the model's was called clean, where the same mistake
with torch's AdamW is an error.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from ckptkit.core.checkpoint import Severity
from ckptkit.inspection import inspect_checkpoint
from ckptkit.views.sections import BNB_NESTED_STATE, state_buffers
from tests.validation.helpers import codes, only, run

REAL = Path(__file__).parent.parent / "fixtures" / "real"
RANKER = REAL / "hf_lora_bnb" / "checkpoint-8"
EIGHT_BIT = REAL / "bnb_8bit" / "ckpt.pt"


def test_the_fixtures_hold_bitsandbytes_nested_state() -> None:
    """What the rest relies on, read with torch itself."""
    opt = torch.load(RANKER / "optimizer.pt", weights_only=True)
    assert set(opt["state"][0]) == {"step", BNB_NESTED_STATE} and opt["state"][0]["step"] == 8
    assert set(opt["state"][0][BNB_NESTED_STATE]) == {"state1", "state2"}
    eight = torch.load(EIGHT_BIT, weights_only=True)["optimizer"]["state"]
    assert eight[0][BNB_NESTED_STATE]["state1"].dtype == torch.uint8
    assert eight[1][BNB_NESTED_STATE]["state1"].dtype == torch.float32


@pytest.mark.parametrize("path, kind, step", [
    (RANKER, "bitsandbytes, 32-bit state (Adam-style: state1, state2)", 8),
    (EIGHT_BIT, "bitsandbytes, 8-bit state (Adam-style: state1, state2)", 2),
], ids=["ranker paged_adamw_32bit", "AdamW8bit"])
def test_bitsandbytes_state_is_named_and_validates_clean(path: Path, kind: str, step: int) -> None:
    summary = inspect_checkpoint(path).optimizer
    assert summary is not None
    assert (summary.kind, summary.state_entries, summary.step) == (kind, 4, step)
    report = run(path, deep=True)
    assert not report.fails(Severity.WARNING), [(f.code, f.message) for f in report.findings]


def test_the_ranker_checkpoint_gets_the_findings_the_same_one_with_adamw_gets() -> None:
    assert codes(run(RANKER, deep=True)) == codes(run(REAL / "hf_lora" / "checkpoint-8", deep=True))


def test_a_ranker_optimizer_for_another_adapter_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-8"
    shutil.copytree(RANKER, folder)
    shutil.copy(REAL / "hf_full" / "checkpoint-8" / "model.safetensors", folder / "model.safetensors")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (folder / name).unlink()
    finding = only(run(folder), "optimizer.param-set-mismatch")
    assert finding.severity is Severity.ERROR
    assert finding.where == "checkpoint-8/optimizer.pt: state"
    assert ("4 entries for the 28 parameters of the model in this checkpoint, but optimizer entry 0 (id 0, "
            "group 0) has state of shape [4, 16]") in finding.message


def _swap_model(source: Path, target: Path) -> dict[str, Any]:
    """The 8-bit checkpoint with a model of other shapes (64->16->4 instead of 64->32->4)."""
    ckpt = torch.load(source, weights_only=True)
    torch.manual_seed(0)
    ckpt["model"] = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.Linear(16, 4)).state_dict()
    torch.save(ckpt, target)
    return ckpt


@pytest.mark.parametrize("nested", [True, False], ids=["bitsandbytes>=0.48", "older bitsandbytes"])
def test_an_8bit_optimizer_for_another_model_is_the_error_adamw_gets(tmp_path: Path, nested: bool) -> None:
    ckpt = _swap_model(EIGHT_BIT, tmp_path / "bad.pt")
    if not nested:      # older bitsandbytes: the buffers beside step
        ckpt["optimizer"]["state"] = {k: state_buffers(v) for k, v in ckpt["optimizer"]["state"].items()}
        torch.save(ckpt, tmp_path / "bad.pt")
    finding = only(run(tmp_path / "bad.pt"), "optimizer.param-set-mismatch")
    assert finding.severity is Severity.ERROR
    model = ckpt["model"]
    torch_opt = torch.optim.AdamW(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 4)).parameters())
    for p in torch_opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    torch_opt.step()
    torch.save({"model": model, "optimizer": torch_opt.state_dict(), "epoch": 1}, tmp_path / "adamw.pt")
    assert finding.message == only(run(tmp_path / "adamw.pt"), "optimizer.param-set-mismatch").message


def test_state_buffers_lifts_the_nested_buffers_and_leaves_other_entries_as_they_are() -> None:
    assert state_buffers({"step": 3, BNB_NESTED_STATE: {"state1": 1, "state2": 2}}) == \
        {"step": 3, "state1": 1, "state2": 2}
    plain = {"step": 3, "exp_avg": 1}
    assert state_buffers(plain) is plain
    assert state_buffers(None) == {} and state_buffers([1]) == {}
