"""The members of a zip archive as byte ranges with the CRC-32 the central directory promises.

Each member's local header (and, for streamed members like torch's, the data descriptor after
its data) is compared with its central-directory entry: a flipped bit in any of them shows up
as a disagreement, and a damaged name or extra-field length moves the data offset, which the
CRC then catches.
"""
from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptkit.core.byte_source import FileBytes
from ckptkit.core.checkpoint import ByteRange
from ckptkit.formats.zip_directory import (
    ZipDirectory,
    crcs_recorded,
    is_storage_record,
    read_directory,
    skip_data_archive,
)

_LOCAL = struct.Struct("<4s5HLLLHH")
_DESCRIPTOR_MAGIC = b"PK\x07\x08"
_STREAMED = 0x08      # general-purpose flag: CRC and sizes follow the data (torch writes this)


@dataclass(frozen=True)
class ZipRecord:
    member: str
    where: ByteRange
    crc: int | None     # None: the archive was written without CRC-32s (`crcs_recorded`)


@dataclass
class ZipMembers:
    """The members of one archive that check out: name, data offset, size and promised CRC-32 at
    the same index of each list (lists, not a ZipRecord each: an archive may hold 100,000), all
    read through `source`; `problems` in plain words, in central-directory order."""

    path: Path
    source: FileBytes
    names: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    crcs: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    plain: int = 0      # the first `plain` members checked out all at once (`zip_headers`)
    # False when torch wrote the archive without CRC-32s (set_crc32_options(False)): every crc is
    # then -1, nothing to compare, and --deep says it could not check the bytes.
    crc_recorded: bool = True
    # True when torch.save wrote it under skip_data(): the storage records' crcs are then -1 (their
    # directory says 0, the bytes being left to a later pass) and --deep checks they were written.
    skip_data: bool = False

    def record(self, i: int) -> ZipRecord:
        crc = self.crcs[i]
        return ZipRecord(self.names[i], ByteRange(self.path, self.offsets[i], self.sizes[i], self.source),
                         None if crc < 0 else crc)

    def add(self, record: ZipRecord) -> None:
        self.names.append(record.member)
        self.offsets.append(record.where.offset)
        self.sizes.append(record.where.length)
        self.crcs.append(-1 if record.crc is None else record.crc)


def zip_records(path: Path) -> tuple[list[ZipRecord], list[str]]:
    """(records, problems): one record per member that checks out; problems in plain words."""
    members = zip_members(path)
    return [members.record(i) for i in range(len(members.names))], members.problems


def zip_members(path: Path, source: FileBytes | None = None, directory: ZipDirectory | None = None) -> ZipMembers:
    """Every member of the archive at `path` that checks out, read through `source` (default: a
    map of its own); `directory`: its central directory, as its reader read it already. torch's
    plain archives are checked all at once (`zip_headers`); a member that does not check out
    there, and every member of any other archive, is checked by `_member`, which says what is
    wrong."""
    source = source if source is not None else FileBytes(path)    # one map for every record and header
    out = ZipMembers(path, source)
    try:
        infos: Any = directory
        if infos is None:
            with open(path, "rb") as f:
                infos = read_directory(f)   # a plain archive (torch's) without zipfile's ZipInfos
        if infos is None:
            with zipfile.ZipFile(path) as zf:
                infos = {i.filename: i for i in zf.infolist()}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        out.problems.append(f"zip directory cannot be read: {exc}")
        return out
    out.crc_recorded = crcs_recorded(infos)
    view = source.view()
    names: Iterable[str] = infos
    if isinstance(infos, ZipDirectory) and len(view):
        # numpy only here: commands that never check every member (inspect, ls) stay numpy-free.
        from ckptkit.validation.zip_headers import plain_members
        plain = plain_members(view, infos)
        ok = plain.plain
        flags = ok.tolist()
        out.names = [n for n, good in zip(plain.names, flags, strict=True) if good]
        out.offsets, out.sizes, out.crcs = (plain.offsets[ok].tolist(), plain.sizes[ok].tolist(),
                                            plain.crcs[ok].tolist())
        out.plain = len(out.names)
        names = [n for n, good in zip(plain.names, flags, strict=True) if not good]
    size = len(view)
    for name in names:
        info = infos[name]
        record, problem = _member(view, path, size, info, source)
        if record is not None:
            out.add(record)
        if problem is not None:
            out.problems.append(f"member {info.filename}: {problem}")
    view.release()
    if not out.crc_recorded:
        out.crcs = [-1] * len(out.crcs)
    elif skip_data_archive(infos):
        out.skip_data = True
        out.crcs = [-1 if is_storage_record(name) else crc for name, crc in zip(out.names, out.crcs, strict=True)]
    # The headers lie between the records: reading them touched most pages of the file, which
    # would count in this process's memory until the data pass releases them a window at a time.
    source.release(0, size)
    return out


def _member(view: memoryview, path: Path, size: int, info: Any,
            source: FileBytes) -> tuple[ZipRecord | None, str | None]:
    """One member (a zipfile.ZipInfo or a zip_directory.ZipEntry) against its local header,
    read through the file's map (no system call per member)."""
    at = info.header_offset
    if not 0 <= at < size:
        return None, f"the central directory puts its header at byte {at}, outside the file"
    raw = view[at: at + _LOCAL.size]
    if len(raw) < _LOCAL.size or raw[:4] != b"PK\x03\x04":
        return None, f"local header is damaged (no signature at byte {at})"
    _, version, flags, method, time, date, crc, csize, usize, name_len, extra_len = _LOCAL.unpack(raw)
    at += _LOCAL.size
    if view[at: at + name_len] != info.orig_filename.encode("utf-8", "replace"):
        return None, "the local header names it differently from the central directory"
    if (version, flags, method, time, date) != (info.extract_version, info.flag_bits, info.compress_type,
                                                *_dos_time_date(info)):
        return None, "local header and central directory disagree (version, flags or time): one of them is damaged"
    if not _padding_intact(bytes(view[at + name_len: at + name_len + extra_len])):
        return None, "the local header's extra field (torch's 'FB' alignment padding) was changed: the file is damaged"
    if method != zipfile.ZIP_STORED or info.compress_type != zipfile.ZIP_STORED:
        return None, "compressed (torch never writes compressed members)"
    offset = info.header_offset + _LOCAL.size + name_len + extra_len
    if offset + info.compress_size > size:
        return None, "its data runs past the end of the file: truncated"
    record = ZipRecord(info.filename, ByteRange(path, offset, info.compress_size, source), info.CRC)
    promised = (info.CRC, info.compress_size, info.file_size)
    if flags & _STREAMED:
        if (crc, csize, usize) not in ((0, 0, 0), promised) or not _descriptor_agrees(view, offset, info):
            return record, _DISAGREE
    elif (crc, csize, usize) != promised and not (crc == info.CRC and 0xFFFFFFFF in (csize, usize)):
        return record, _DISAGREE     # (zip64 keeps the real sizes in the extra field)
    return record, None


_DISAGREE = "local header and central directory disagree (CRC or sizes): one of them is damaged"


def _descriptor_agrees(view: memoryview, data_offset: int, info: Any) -> bool:
    """The data descriptor after a streamed member repeats its CRC and sizes (32- or 64-bit)."""
    at = data_offset + info.compress_size
    raw = bytes(view[at: at + 24])
    if raw[:4] == _DESCRIPTOR_MAGIC:
        raw = raw[4:]
    if len(raw) < 12:
        return False
    crc, csize32, usize32 = struct.unpack("<LLL", raw[:12])
    if crc != info.CRC:
        return False
    if (csize32, usize32) == (info.compress_size, info.file_size):
        return True
    return len(raw) >= 20 and struct.unpack("<QQ", raw[4:20]) == (info.compress_size, info.file_size)


def _dos_time_date(info: Any) -> tuple[int, int]:
    stored = getattr(info, "dos_time_date", None)     # a ZipEntry keeps them as the directory has them
    if stored is not None:
        return stored
    y, mo, d, h, mi, sec = info.date_time
    return h << 11 | mi << 5 | sec // 2, (y - 1980) << 9 | mo << 5 | d


def _padding_intact(extra: bytes) -> bool:
    """torch pads each member's data to 64 bytes with an extra field of id 'FB' filled with 'Z';
    the only other extra field it writes is zip64's (id 1)."""
    while len(extra) >= 4:
        kind, length = struct.unpack("<2sH", extra[:4])
        if (kind not in _KNOWN_EXTRA or 4 + length > len(extra)
                or (kind == b"FB" and extra[4: 4 + length].strip(b"Z"))):
            return False
        extra = extra[4 + length:]
    return not extra


_KNOWN_EXTRA = (b"FB", b"\x01\x00")
