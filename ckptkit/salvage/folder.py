"""Salvaging a checkpoint folder member by member: whole members are copied byte for byte,
damaged torch zips and safetensors files are salvaged, damaged JSON is lost."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ckptkit.core.errors import CkptkitError
from ckptkit.formats import detect_format, open_checkpoint
from ckptkit.formats.base import HEAD_BYTES
from ckptkit.formats.safetensors_file import SafetensorsFormat
from ckptkit.formats.torch_zip import ZIP_MAGIC
from ckptkit.salvage.files import salvage_file
from ckptkit.salvage.report import LostItem, RecoveredItem, Resumability, SalvageReport

# Which member holds which part, by the names the folder formats use (ckptkit.formats.folder).
_MODEL_MEMBERS = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
_OPTIMIZER_MEMBERS = ("optimizer.pt", "optimizer.bin")
_COUNTER_MEMBERS = ("trainer_state.json", "training_state.pth")


def salvage_folder(path: Path, out_tmp: Path) -> SalvageReport:
    """Salvage every file below `path` into the (empty, temporary) folder `out_tmp`."""
    report = SalvageReport(path, None, "folder")
    for source in sorted(p for p in path.rglob("*") if p.is_file()):
        name = str(source.relative_to(path))
        dest = out_tmp / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        kind = _kind(source)
        if kind in ("torch-zip", "safetensors"):
            try:
                member = salvage_file(source, dest, None)
            except CkptkitError as exc:
                report.lost.append(LostItem(name, exc.message))
                continue
            report.members.append(member)
        elif kind == "json":
            try:
                json.loads(source.read_bytes())
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                report.lost.append(LostItem(name, f"not valid JSON any more ({exc})"))
                continue
            shutil.copyfile(source, dest)
            report.recovered.append(RecoveredItem(name, "JSON file", source.stat().st_size, "JSON parses"))
        else:
            checked = _readable(source)
            if checked.startswith("unreadable"):
                report.lost.append(LostItem(name, checked))
                continue
            shutil.copyfile(source, dest)
            report.recovered.append(RecoveredItem(name, "file", source.stat().st_size, checked))
    report.resume = _resumability(report)
    return report


def _readable(source: Path) -> str:
    """How far a member salvage cannot rebuild was checked: a format ckptkit knows must read
    (a pickle to its end, through the restricted unpickler); anything else is copied unchecked."""

    try:
        detect_format(source)
    except CkptkitError:
        return "unchecked: copied as it is (no format ckptkit reads)"
    try:
        open_checkpoint(source)
    except CkptkitError as exc:
        return f"unreadable: {exc.message}"
    return "reads whole (index; no checksum to compare)"


def _kind(source: Path) -> str:
    with open(source, "rb") as f:
        head = f.read(HEAD_BYTES)
    if source.suffix == ".json":
        return "json"
    if SafetensorsFormat().sniff(source, head):
        return "safetensors"
    if head.startswith(ZIP_MAGIC) or _looks_zip_named(source) or source.suffix == ".safetensors":
        return "torch-zip"
    return "other"


def _looks_zip_named(source: Path) -> bool:
    # A torch zip whose first header was overwritten still ends in .pt/.pth/.bin: scan it.
    return source.suffix in (".pt", ".pth", ".bin", ".ckpt")


def _resumability(report: SalvageReport) -> Resumability:
    def state(names: tuple[str, ...]) -> str:
        lost = {item.name for item in report.lost}
        for m in report.members:
            if m.source.name in names:
                return "whole" if m.complete else f"partial: {len(m.all_lost())} item(s) of {m.source.name} lost"
        for r in report.recovered:
            if r.name in names:
                return "whole"
        hit = next((n for n in names if n in lost), None)
        return f"lost ({hit})" if hit else "none in the checkpoint"

    model, optimizer, counters = state(_MODEL_MEMBERS), state(_OPTIMIZER_MEMBERS), state(_COUNTER_MEMBERS)
    counters = "recovered" if counters == "whole" else counters
    return Resumability(model, optimizer, counters,
                        model == "whole" and optimizer == "whole" and counters == "recovered")
