"""Salvaging one file: a torch.save zip by its CRC-checked records, a safetensors file by its
complete tensors. `salvage_file` is the one dispatcher, used for a file given alone and for
each member of a folder."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, BinaryIO

from ckptkit.core.errors import (
    CorruptCheckpointError,
    WriteVerificationError,
)
from ckptkit.formats import open_checkpoint
from ckptkit.formats.base import HEAD_BYTES
from ckptkit.formats.safetensors_file import SafetensorsFormat, read_safetensors_header, write_safetensors
from ckptkit.formats.torch_zip import ZIP_MAGIC, write_torch_zip
from ckptkit.salvage.report import SalvageReport
from ckptkit.salvage.safetensors import salvage_safetensors
from ckptkit.salvage.torch_zip import salvage_torch_zip
from ckptkit.storage.atomic import atomic_write_file


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

    report, tensors, metadata = salvage_safetensors(path)
    if not tensors:
        raise CorruptCheckpointError(path, f"no tensor of its {len(report.lost)} is complete: nothing to salvage")
    def write(f: BinaryIO) -> None:
        write_safetensors(f, tensors, metadata)

    atomic_write_file(out, write, verify=_same_tensors(tensors))
    return report


def _salvage_zip(path: Path, out: Path, names_from: Path | None) -> SalvageReport:

    report, rebuilt, prefix = salvage_torch_zip(path, names_from)
    if names_from is not None and any(r.name == "data.pkl" for r in report.recovered):
        report.notes.append(f"--names-from {names_from} was not needed: the file's own data.pkl is intact")
    # Always written anew, even when every record is intact: the bytes around the records (the
    # central directory, its end record) are covered by no CRC, and one damaged byte there makes
    # torch.load refuse a copy that Python's zipfile still reads.
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


def _zip_checks(tmp: Path) -> None:
    """Read the written archive back: every record's CRC-32, then its tree."""

    if not _zip_reads_whole(tmp):
        raise WriteVerificationError(tmp, "the salvaged archive does not read back with matching CRC-32s")
    open_checkpoint(tmp)


def _same_tensors(tensors: dict[str, Any]) -> Any:
    def verify(tmp: Path) -> None:

        written, _ = read_safetensors_header(tmp)
        for name, t in tensors.items():
            if name not in written or bytes(written[name].read_bytes()) != bytes(t.read_bytes()):
                raise WriteVerificationError(tmp, f"tensor {name!r} does not read back as salvaged")
    return verify
