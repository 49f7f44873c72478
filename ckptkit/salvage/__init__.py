"""`ckptkit salvage DAMAGED OUT`: rescue what a damaged checkpoint still holds.

A save cut short (crash, full disk, sync client) or partly overwritten is unreadable as a
whole, but most of it is usually intact. This writes a new checkpoint of everything that can
be proved intact (torch zip records by their CRC-32; complete safetensors tensors; whole folder
members), loadable by the standard loaders, atomically, never over the input, and reports
what was recovered, what was lost (by name where known) and whether a run can resume from it.
"""
from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from ckptkit.core.errors import (
    CkptkitError,
    CorruptCheckpointError,
    MissingFileError,
    WriteVerificationError,
)
from ckptkit.formats.base import HEAD_BYTES
from ckptkit.formats.safetensors_file import SafetensorsFormat
from ckptkit.formats.torch_zip import ZIP_MAGIC
from ckptkit.salvage.report import LostItem, RecoveredItem, Resumability, SalvageReport
from ckptkit.storage.atomic import atomic_write_dir, atomic_write_file

__all__ = ["LostItem", "RecoveredItem", "Resumability", "SalvageReport", "salvage", "salvage_file"]


def salvage(damaged: str | os.PathLike[str], out: str | os.PathLike[str],
            names_from: str | os.PathLike[str] | None = None) -> SalvageReport:
    """Write what `damaged` still holds to `out` (a new file or folder) and report on it."""
    damaged, out = Path(damaged), Path(out)
    names = Path(names_from) if names_from is not None else None
    _check_paths(damaged, out, names)
    if damaged.is_dir():
        from ckptkit.salvage.folder import salvage_folder

        reports: list[SalvageReport] = []
        atomic_write_dir(out, lambda tmp: reports.append(salvage_folder(damaged, tmp)))
        report = reports[0]
    else:
        report = salvage_file(damaged, out, names)
    report.output = out
    return report


def _check_paths(damaged: Path, out: Path, names: Path | None) -> None:
    if not damaged.exists():
        raise MissingFileError(damaged, "no such file or folder")
    if names is not None and not names.exists():
        raise MissingFileError(names, "no such file or folder (given as --names-from)")
    if os.path.lexists(out):
        raise CkptkitError(out, "already exists: salvage writes a new checkpoint and never replaces "
                           "anything; give a name that is not taken")
    resolved, source = out.resolve(), damaged.resolve()
    if resolved == source or source in resolved.parents:
        raise CkptkitError(out, f"lies inside {damaged}: salvage never writes into what it reads")


def salvage_file(path: Path, out: Path, names_from: Path | None) -> SalvageReport:
    """Salvage the single file `path` into the new file `out`."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    if not head:
        raise CorruptCheckpointError(path, "empty file (0 bytes): nothing to salvage")
    if SafetensorsFormat().sniff(path, head):
        return _salvage_safetensors(path, out)
    if path.suffix == ".safetensors" and not head.startswith(ZIP_MAGIC):
        raise CorruptCheckpointError(path, "its safetensors header is damaged (the length or the opening '{' "
                                     "changed): without it no tensor can be located")
    return _salvage_zip(path, out, names_from)


def _salvage_safetensors(path: Path, out: Path) -> SalvageReport:
    from ckptkit.formats.safetensors_file import write_safetensors
    from ckptkit.salvage.safetensors import salvage_safetensors

    report, tensors, metadata = salvage_safetensors(path)
    if not tensors:
        raise CorruptCheckpointError(path, f"no tensor of its {len(report.lost)} is complete: nothing to salvage")
    def write(f: BinaryIO) -> None:
        write_safetensors(f, tensors, metadata)

    atomic_write_file(out, write, verify=_same_tensors(tensors))
    return report


def _salvage_zip(path: Path, out: Path, names_from: Path | None) -> SalvageReport:
    from ckptkit.formats.torch_zip import write_torch_zip
    from ckptkit.salvage.torch_zip import salvage_torch_zip

    report, rebuilt, prefix = salvage_torch_zip(path, names_from)
    if names_from is not None and any(r.name == "data.pkl" for r in report.recovered):
        report.notes.append(f"--names-from {names_from} was not needed: the file's own data.pkl is intact")
    if report.complete and names_from is None and _zip_reads_whole(path):
        # Nothing lost and the archive is sound: its own bytes are the best copy.
        atomic_write_file(out, lambda f: _copy(path, f), verify=_zip_checks)
        return report
    if not rebuilt.crcs and not any(r.name == "data.pkl" for r in report.recovered):
        raise CorruptCheckpointError(path, f"no record is intact ({len(report.lost)} lost): nothing to salvage")
    atomic_write_file(out, lambda f: write_torch_zip(f, rebuilt.tree, prefix, known_crcs=rebuilt.crcs),
                      verify=_zip_checks)
    return report


def _zip_reads_whole(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip() is None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return False


def _copy(path: Path, f: BinaryIO) -> None:
    with open(path, "rb") as src:
        shutil.copyfileobj(src, f, 8 << 20)


def _zip_checks(tmp: Path) -> None:
    """Read the written archive back: every record's CRC-32, then its tree."""
    from ckptkit.formats import open_checkpoint

    if not _zip_reads_whole(tmp):
        raise WriteVerificationError(tmp, "the salvaged archive does not read back with matching CRC-32s")
    open_checkpoint(tmp)


def _same_tensors(tensors: dict[str, Any]) -> Any:
    def verify(tmp: Path) -> None:
        from ckptkit.formats.safetensors_file import read_safetensors_header

        written, _ = read_safetensors_header(tmp)
        for name, t in tensors.items():
            if name not in written or bytes(written[name].read_bytes()) != bytes(t.read_bytes()):
                raise WriteVerificationError(tmp, f"tensor {name!r} does not read back as salvaged")
    return verify
