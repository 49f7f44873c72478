"""Salvaging a safetensors file whose header survived: every tensor whose bytes are all there.

safetensors stores no checksum, so a tensor inside the file's length is recovered as stored
and marked unchecked: an overwrite inside its bytes cannot be seen (a truncation can).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ckptkit.core.errors import CkptkitError
from ckptkit.families import build_checkpoint
from ckptkit.formats.safetensors_file import header_tensor, read_header_entries
from ckptkit.salvage.report import LostItem, RecoveredItem, Resumability, SalvageReport

UNCHECKED = "unchecked: safetensors stores no checksum (a cut is seen, an overwrite is not)"


def salvage_safetensors(path: Path) -> tuple[SalvageReport, dict[str, Any], dict[str, str]]:
    """(report, the complete tensors by name, __metadata__); raises when the header is gone."""
    header, metadata, data_start, size = read_header_entries(path)
    report = SalvageReport(path, None, "safetensors")
    tensors: dict[str, Any] = {}
    for name, info in header.items():
        try:
            tensor = header_tensor(path, name, info, data_start, size)
        except CkptkitError as exc:
            report.lost.append(LostItem(name, exc.message))
            continue
        tensors[name] = tensor
        report.recovered.append(RecoveredItem(name, tensor.describe(), tensor.nbytes, UNCHECKED))
    report.notes.append("safetensors stores no checksum: tensors inside the file's length are taken as "
                        "stored; compare them with `ckptkit diff` against another copy if you have one")
    whole = "whole" if tensors and not report.lost else (
        f"partial: {len(report.lost)} of {len(header)} tensors lost" if tensors else "none recovered")
    ckpt = build_checkpoint(path, "safetensors", tensors, []) if tensors else None
    model = whole if ckpt is not None and ckpt.model else "none in the checkpoint"
    report.resume = Resumability(model, "none in the checkpoint", "none in the checkpoint", False)
    return report, tensors, metadata
