"""Salvaging a damaged `torch.save` zip: its CRC-checked records, named by data.pkl or by OTHER."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import (
    ByteRange,
    Checkpoint,
    StorageRef,
    iter_tensors,
    mapped_bytes,
)
from ckptkit.core.errors import CorruptCheckpointError, UnsupportedFeatureError
from ckptkit.families import build_checkpoint
from ckptkit.formats import open_checkpoint
from ckptkit.formats.torch_zip import ArchiveIndex, decode_data_pkl
from ckptkit.salvage.report import LostItem, RecoveredItem, Resumability, SalvageReport
from ckptkit.salvage.tree import Rebuilt, rebuild
from ckptkit.salvage.zip_scan import FoundRecord, ZipScan, scan_zip

_MISSING = "gone (cut off, or its header was overwritten)"


def salvage_torch_zip(path: Path, names_from: Path | None) -> tuple[SalvageReport, Rebuilt, str]:
    """(report, rebuilt tree, archive prefix) for the damaged archive `path`; nothing written."""
    scan = scan_zip(path)
    prefix = scan.prefix
    if prefix is None:
        raise CorruptCheckpointError(path, "no zip record found: not a torch.save zip archive (salvage reads those, "
                                     "safetensors files and checkpoint folders), or every header in it is gone")
    records = {name[len(prefix) + 6:]: rec for name, rec in scan.found.items() if name.startswith(prefix + "/data/")}
    damaged = {d.name[len(prefix) + 6:]: d.reason for d in scan.damaged if d.name.startswith(prefix + "/data/")}
    pkl = scan.found.get(f"{prefix}/data.pkl")
    report = SalvageReport(path, None, "torch-zip")
    if pkl is not None:
        _check_byteorder(path, scan, prefix)
        tree, globals_ = _decode(path, prefix, pkl)
        ckpt = build_checkpoint(path, "torch-zip", tree, globals_)
        rebuilt = rebuild(tree, lambda s: _by_key(s, records, damaged), _optimizer_key(ckpt))
        report.recovered.append(
            RecoveredItem("data.pkl", "the tree: names, counters, settings", pkl.where.length, "CRC-32")
        )
        counters = f"recovered: {ckpt.progress.describe()}" if ckpt.progress.known else "none in the checkpoint"
    elif names_from is not None:
        ckpt = _names_source(names_from)
        rebuilt = rebuild(ckpt.tree, _by_key_or_order(ckpt.tree, records, damaged), _optimizer_key(ckpt))
        report.lost.append(LostItem("data.pkl", _why(scan, f"{prefix}/data.pkl")))
        report.notes.append(f"names, shapes and every non-tensor value (counters, settings) come from {names_from}")
        counters = (f"taken from {names_from.name} ({ckpt.progress.describe()}), not from the damaged file: "
                    "set them with `ckptkit fix-epoch`")
    else:
        raise CorruptCheckpointError(path, f"{prefix}/data.pkl (the names and shapes of every tensor) is "
                                     f"{_why(scan, prefix + '/data.pkl')}; {len(records)} tensor records are intact. "
                                     "Give another checkpoint of the same run to name them: "
                                     f"ckptkit salvage {path} OUT --names-from OTHER")
    report.recovered.extend(rebuilt.recovered)
    report.lost.extend(rebuilt.lost)
    written = {w.offset for w in rebuilt.ranges.values()}
    unused = {k for k, rec in records.items() if rec.where.offset not in written}
    if unused and pkl is None:
        # Intact bytes of the damaged file that OTHER could not name: not written, so lost.
        report.lost.extend(
            LostItem(
                f"(unnamed record data/{k})",
                f"intact ({records[k].where.length} bytes), but "
                f"no tensor of {names_from.name if names_from else 'OTHER'} matches it by key and size",
            )
            for k in sorted(unused, key=lambda k: (len(k), k))
        )
    elif unused:
        report.notes.append(f"{len(unused)} intact record(s) that data.pkl does not name were left out "
                            f"({sum(records[k].where.length for k in unused)} bytes)")
    report.resume = resumability(ckpt, report, counters, counters.startswith(("recovered", "none")))
    return report, rebuilt, prefix


def _optimizer_key(ckpt: Checkpoint) -> str | None:
    source = ckpt.sources.get("optimizer")
    if source is None or not isinstance(ckpt.optimizer, dict) or "state" not in ckpt.optimizer:
        return None    # (Lightning keeps a list of optimizer states: whole-list loss covers it)
    return "" if source == "(top level)" else source


def _decode(path: Path, prefix: str, pkl: FoundRecord) -> tuple[Any, list[Any]]:
    index = ArchiveIndex({}, prefix, bytes(mapped_bytes(pkl.where)))
    result, _ = decode_data_pkl(path, index)
    return result.value, result.globals


def _check_byteorder(path: Path, scan: ZipScan, prefix: str) -> None:
    rec = scan.found.get(f"{prefix}/byteorder")
    if rec is not None and bytes(mapped_bytes(rec.where)) not in (b"little", b""):
        raise UnsupportedFeatureError(path, "tensor data is big-endian; ckptkit reads little-endian only")


def _why(scan: ZipScan, name: str) -> str:
    reason = next((d.reason for d in scan.damaged if d.name == name), None)
    return f"damaged ({reason})" if reason else "gone (cut off, or its header was overwritten)"


def _by_key(
    storage: StorageRef, records: dict[str, FoundRecord], damaged: dict[str, str]
) -> tuple[ByteRange, int] | str:
    rec = records.get(storage.key)
    if rec is None:
        return f"record data/{storage.key}: {damaged.get(storage.key, _MISSING)}"
    if rec.where.length != storage.nbytes:
        return (f"record data/{storage.key} holds {rec.where.length} bytes but its tensors need "
                f"{storage.nbytes}: a header was damaged")
    return rec.where, rec.crc


def _names_source(names_from: Path) -> Checkpoint:

    ckpt = open_checkpoint(names_from)
    if not any(True for _ in iter_tensors(ckpt.tree)) or ckpt.members:
        raise UnsupportedFeatureError(
            names_from,
            "--names-from needs a single-file checkpoint with tensors (a .pt/.pth/.bin/.safetensors of the same run)",
        )
    return ckpt


def _by_key_or_order(tree: Any, records: dict[str, FoundRecord], damaged: dict[str, str]) -> Any:
    """Match OTHER's storages to the damaged file's records: by record key and size first;
    the rest by order, only when both sides have the same number left and every size agrees."""
    storages: list[StorageRef] = []
    for _, t in iter_tensors(tree):
        if all(t.storage is not s for s in storages):
            storages.append(t.storage)
    matched: dict[int, tuple[ByteRange, int]] = {}
    used: set[str] = set()
    for s in storages:
        rec = records.get(s.key)
        if rec is not None and rec.where.length == s.nbytes and s.key not in used:
            matched[id(s)] = (rec.where, rec.crc)
            used.add(s.key)
    rest_s = [s for s in storages if id(s) not in matched]
    rest_r = sorted((k for k in records if k not in used), key=lambda k: (len(k), k))
    # Left-over storages and records pair up in order only when they are as many and each size agrees.
    if (
        rest_s
        and len(rest_s) == len(rest_r)
        and all(s.nbytes == records[k].where.length for s, k in zip(rest_s, rest_r, strict=True))
    ):
        for s, k in zip(rest_s, rest_r, strict=True):
            matched[id(s)] = (records[k].where, records[k].crc)

    def locate(s: StorageRef) -> tuple[ByteRange, int] | str:
        if id(s) in matched:
            return matched[id(s)]
        return ("no intact record of the damaged file matches it by key and size"
                + (f" (record data/{s.key}: {damaged[s.key]})" if s.key in damaged else ""))
    return locate


def resumability(ckpt: Checkpoint, report: SalvageReport, counters: str, counters_ok: bool) -> Resumability:
    lost = [item.name for item in report.lost]
    model = _part(ckpt, "model", ckpt.model, lost)
    optimizer = _part(ckpt, "optimizer", ckpt.optimizer, lost)
    # Without its optimizer state a run restarts its moments from zero: not a resume.
    resumable = model == "whole" and optimizer == "whole" and counters_ok
    return Resumability(model, optimizer, counters, resumable)


def _part(ckpt: Checkpoint, section: str, value: Any, lost: list[str]) -> str:
    source = ckpt.sources.get(section)
    if value is None or source is None:
        return "none in the checkpoint"
    prefix = "" if source == "(top level)" else source + "."
    total = sum(1 for _ in iter_tensors(value))
    gone = [name for name in lost if name.startswith(prefix) and name != "data.pkl"]
    if not gone:
        return "whole"
    return f"partial: {len(gone)} of {total} tensors lost"
