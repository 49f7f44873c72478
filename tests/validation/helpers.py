"""Helpers shared by the validation tests (importable: `from tests.validation.helpers import ...`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckptkit.core.checkpoint import Finding
from ckptkit.validation import ValidationReport, validate_path


def loads_weights_only(path: Path) -> bool:
    """Whether torch.load(weights_only=True) (torch.load's default since 2.6) accepts the file:
    the ground truth the loading verdicts are held to."""
    try:
        torch.load(path, weights_only=True)
    except Exception:    # torch's UnpicklingError: "Weights only load failed"
        return False
    return True


def trained_state(in_features: int = 8, hidden: int = 16, steps: int = 2) -> dict[str, Any]:
    """Model, AdamW and StepLR state after `steps` consistent steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    for _ in range(steps):
        model(torch.randn(4, in_features)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return {"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
            "scheduler_state_dict": sched.state_dict()}


def run(path: Path, **kwargs: Any) -> ValidationReport:
    return validate_path(path, siblings=False, **kwargs)


def only(report: ValidationReport, code: str) -> Finding:
    """The one finding with `code` (fails listing all findings otherwise)."""
    found = [f for f in report.findings if f.code == code]
    assert len(found) == 1, f"expected one {code}, got: {[(f.code, f.message) for f in report.findings]}"
    return found[0]


def codes(report: ValidationReport) -> set[str]:
    return {f.code for f in report.findings}


def zip_member_range(path: Path, suffix: str) -> tuple[int, int]:
    """(offset, length) of the data of the zip member whose name ends with `suffix`."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        name_len, extra_len = struct.unpack("<HH", f.read(30)[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def flip_bit(src: Path, dst: Path, offset: int, bit: int = 0) -> Path:
    data = bytearray(src.read_bytes())
    data[offset] ^= 1 << bit
    dst.write_bytes(bytes(data))
    return dst
