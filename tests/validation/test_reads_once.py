"""validate reads each optimizer `step` tensor once: two checks (counters, epoch-step) ask for
the optimizer's step, and at 20,000 parameters each reading is 20,000 one-element reads."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckptkit.core.checkpoint import TensorRef
from ckptkit.validating import validate_path


def test_each_optimizer_step_tensor_is_read_once_per_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(5)])
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    path = tmp_path / "training_state.pth"
    torch.save({"epoch": 1, "step": 0, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict(), "total_steps_per_epoch": 4}, path)
    reads: list[str] = []
    original = TensorRef.scalar_value

    def counting(self: TensorRef) -> object:
        reads.append(self.storage.key)
        return original(self)
    monkeypatch.setattr(TensorRef, "scalar_value", counting)
    report = validate_path(path)
    assert "counters" in report.checks_run and "epoch-step" in report.checks_run
    assert len(reads) == len(set(reads))
    assert len(reads) >= 10   # the ten parameters' step tensors
