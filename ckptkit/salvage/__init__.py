"""`ckptkit salvage DAMAGED OUT`: rescue what a damaged checkpoint still holds.

A save cut short (crash, full disk, sync client) or partly overwritten is unreadable as a
whole, but most of it is usually intact. This writes a new checkpoint of everything that can
be proved intact (torch zip records by their CRC-32; complete safetensors tensors; whole folder
members), loadable by the standard loaders, atomically, never over the input, and reports
what was recovered, what was lost (by name where known) and whether a run can resume from it.
"""
from __future__ import annotations

import os
from pathlib import Path

from ckptkit.core.errors import CkptkitError, MissingFileError
from ckptkit.salvage.files import salvage_file
from ckptkit.salvage.folder import salvage_folder
from ckptkit.salvage.report import LostItem, RecoveredItem, Resumability, SalvageReport
from ckptkit.storage.atomic import atomic_write_dir

__all__ = ["LostItem", "RecoveredItem", "Resumability", "SalvageReport", "salvage", "salvage_file"]


def salvage(damaged: str | os.PathLike[str], out: str | os.PathLike[str],
            names_from: str | os.PathLike[str] | None = None) -> SalvageReport:
    """Write what `damaged` still holds to `out` (a new file or folder) and report on it."""
    damaged, out = Path(damaged), Path(out)
    names = Path(names_from) if names_from is not None else None
    _check_paths(damaged, out, names)
    if damaged.is_dir():
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
