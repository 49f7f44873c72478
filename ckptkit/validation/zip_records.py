"""The members of a zip archive as byte ranges with the CRC-32 the central directory promises.

Each local header is read and compared with its central-directory entry: a flipped bit in
either shows up as a disagreement, and a damaged name or extra-field length moves the data
offset, which the CRC then catches.
"""
from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ckptkit.checkpoint import ByteRange

_LOCAL = struct.Struct("<4s5HLLLHH")


@dataclass(frozen=True)
class ZipRecord:
    member: str
    where: ByteRange
    crc: int


def zip_records(path: Path) -> tuple[list[ZipRecord], list[str]]:
    """(records, problems): one record per stored member; problems in plain words."""
    records: list[ZipRecord] = []
    problems: list[str] = []
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return [], [f"zip directory cannot be read: {exc}"]
    size = path.stat().st_size
    with zf, open(path, "rb") as f:
        for info in zf.infolist():
            f.seek(info.header_offset)
            raw = f.read(_LOCAL.size)
            problem = _compare(info, raw)
            if problem is None:
                name_len, extra_len = _LOCAL.unpack(raw)[-2:]
                offset = info.header_offset + _LOCAL.size + name_len + extra_len
                if f.seek(info.header_offset + _LOCAL.size) >= 0 and f.read(name_len) != info.orig_filename.encode("utf-8", "replace"):
                    problem = f"member {info.filename}: local header names it differently"
                elif info.compress_type != zipfile.ZIP_STORED:
                    problem = f"member {info.filename}: compressed (torch never writes compressed members)"
                elif offset + info.compress_size > size:
                    problem = f"member {info.filename}: data runs past the end of the file: truncated"
                else:
                    records.append(ZipRecord(info.filename, ByteRange(path, offset, info.compress_size), info.CRC))
            if problem:
                problems.append(problem)
    return records, problems


def _compare(info: zipfile.ZipInfo, raw: bytes) -> str | None:
    if len(raw) < _LOCAL.size or raw[:4] != b"PK\x03\x04":
        return f"member {info.filename}: local header is damaged (no signature at byte {info.header_offset})"
    _, _, flags, method, _, _, crc, csize, usize, _, _ = _LOCAL.unpack(raw)
    if flags & 0x08:          # sizes and CRC follow the data (streamed zip): the directory is authoritative
        return None
    if (method, crc, csize, usize) != (info.compress_type, info.CRC, info.compress_size, info.file_size):
        if csize == 0xFFFFFFFF or usize == 0xFFFFFFFF:   # zip64: real sizes live in the extra field
            return None if (method, crc) == (info.compress_type, info.CRC) else _mismatch(info)
        return _mismatch(info)
    return None


def _mismatch(info: zipfile.ZipInfo) -> str:
    return (f"member {info.filename}: local header and central directory disagree (CRC, sizes or "
            "method): one of them is damaged")
