"""Finding the records of a damaged `torch.save` zip by their local headers alone.

A torch zip's central directory is written last, so a save cut short by a crash, a full disk
or a sync client has none; every record before the cut is still there behind its own local
header. torch streams its records (flag bit 3): the local header carries no CRC or size, and
a data descriptor after the data (``PK\\x07\\x08``, CRC-32, sizes) does. A record is found by
looking for the first descriptor after its header whose size field equals the distance from
the header's data start; it counts as recovered only when the CRC-32 of those bytes equals the
descriptor's. Members ckptkit's own writer made (sizes in the local header) are read directly.
Nothing is ever called recovered without a CRC that matches.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ckptkit.core.checkpoint import ByteRange
from ckptkit.formats.torch_zip import LOCAL_HEADER, ZIP_MAGIC
from ckptkit.storage.crc import range_crc32

DESCRIPTOR_MAGIC = b"PK\x07\x08"
_STREAMED = 0x08          # general-purpose flag bit 3: CRC and sizes follow the data
_MAX_NAME = 1024          # longer "names" are bytes of tensor data that happen to read "PK\3\4"
_ZIP64 = 0xFFFFFFFF


@dataclass(frozen=True)
class FoundRecord:
    """A member whose bytes are all present and whose CRC-32 matches its header or descriptor."""

    name: str
    header_offset: int
    where: ByteRange
    crc: int


@dataclass(frozen=True)
class DamagedRecord:
    """A member whose local header was found but whose bytes are cut off or changed."""

    name: str
    header_offset: int
    reason: str


@dataclass
class ZipScan:
    path: Path
    found: dict[str, FoundRecord] = field(default_factory=dict)
    damaged: list[DamagedRecord] = field(default_factory=list)

    @property
    def prefix(self) -> str | None:
        """The archive folder (``archive`` for ``archive/data.pkl``): the most common first part."""
        counts: dict[str, int] = {}
        for name in [*self.found, *(d.name for d in self.damaged)]:
            counts[name.split("/", 1)[0]] = counts.get(name.split("/", 1)[0], 0) + 1
        return max(counts, key=lambda k: counts[k]) if counts else None


def scan_zip(path: Path) -> ZipScan:
    """Every member of the zip at `path` found through its local header, checked by CRC-32."""
    scan = ZipScan(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        view = _File(fd, os.fstat(fd).st_size)
        pos = view.find(ZIP_MAGIC, 0)
        while pos >= 0:
            pos = _one_member(scan, fd, view, pos, view.size)
            pos = view.find(ZIP_MAGIC, pos)
    finally:
        os.close(fd)
    _drop_duplicates(scan)
    return scan


class _File:
    """Slices and searches of an open file by pread, a window at a time: memory stays at one
    window whatever the file's size (a map would count every page searched in our RSS)."""

    WINDOW = 4 << 20

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    def __getitem__(self, span: slice) -> bytes:
        start, stop = max(0, span.start), min(self.size, span.stop)
        return os.pread(self.fd, stop - start, start) if stop > start else b""

    def find(self, needle: bytes, start: int) -> int:
        while start < self.size:
            chunk = os.pread(self.fd, self.WINDOW + len(needle) - 1, start)
            at = chunk.find(needle)
            if at >= 0:
                return start + at
            start += self.WINDOW
        return -1


def _one_member(scan: ZipScan, fd: int, view: _File, pos: int, size: int) -> int:
    """Read the member whose local header starts at `pos`; returns where to look for the next."""
    raw = view[pos: pos + LOCAL_HEADER.size]
    if len(raw) < LOCAL_HEADER.size:
        return pos + 4
    _, _, flags, method, _, _, crc, csize, _, name_len, extra_len = LOCAL_HEADER.unpack(raw)
    name = _name(view[pos + LOCAL_HEADER.size: pos + LOCAL_HEADER.size + name_len], name_len)
    if name is None:
        return pos + 4           # "PK\3\4" inside tensor bytes, not a header
    extra = view[pos + LOCAL_HEADER.size + name_len: pos + LOCAL_HEADER.size + name_len + extra_len]
    start = pos + LOCAL_HEADER.size + name_len + extra_len
    if method != 0:
        scan.damaged.append(
            DamagedRecord(name, pos, "compressed or its header is damaged (torch stores, never compresses)")
        )
        return pos + 4
    if flags & _STREAMED:
        located = _from_descriptor(fd, view, start, scan.path)
    else:
        located = _from_header(fd, start, _zip64_size(extra) if csize == _ZIP64 else csize, crc, size, scan.path)
    if isinstance(located, str):
        scan.damaged.append(DamagedRecord(name, pos, located))
        return pos + 4
    where, found_crc, end = located
    scan.found[name] = FoundRecord(name, pos, where, found_crc) if name not in scan.found else _twice(scan, name, pos)
    return end


def _name(raw: bytes, name_len: int) -> str | None:
    if not 0 < name_len <= _MAX_NAME or len(raw) != name_len:
        return None
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not name.isprintable() or "/" not in name or name.startswith("/") or ".." in name.split("/"):
        return None
    return name


def _from_header(fd: int, start: int, length: int, crc: int, size: int,
                 path: Path) -> tuple[ByteRange, int, int] | str:
    if length < 0:
        return "its header is damaged (zip64 size missing)"
    if start + length > size:
        return f"cut off: its {length} bytes run {start + length - size} past the end of the file"
    if range_crc32(fd, path, start, length) != crc:
        return _mismatch(crc)
    return ByteRange(path, start, length), crc, start + length


def _mismatch(crc: int) -> str:
    if crc == 0:    # torch.serialization.set_crc32_options(False) writes 0 for every record
        return ("no CRC-32 recorded (saved with torch.serialization.set_crc32_options(False)): its bytes "
                "cannot be verified")
    return "CRC-32 mismatch: its bytes were changed"


def _from_descriptor(fd: int, view: _File, start: int, path: Path) -> tuple[ByteRange, int, int] | str:
    """The first descriptor after `start` whose size equals its distance from `start`: a
    descriptor's 4-byte signature plus a size naming exactly this spot is no accident."""
    at = view.find(DESCRIPTOR_MAGIC, start)
    while at >= 0:
        length = at - start
        small = view[at + 4: at + 16]
        large = view[at + 4: at + 24]
        if len(small) == 12 and struct.unpack("<LLL", small)[1:] == (length, length):
            crc, end = struct.unpack("<L", small[:4])[0], at + 16
        elif len(large) == 20 and struct.unpack("<LQQ", large)[1:] == (length, length):
            crc, end = struct.unpack("<L", large[:4])[0], at + 24
        else:
            at = view.find(DESCRIPTOR_MAGIC, at + 4)
            continue
        if range_crc32(fd, path, start, length) != crc:
            return _mismatch(crc)
        return ByteRange(path, start, length), crc, end
    return "cut off: the file ends inside it (no data descriptor)"


def _zip64_size(extra: bytes) -> int:
    while len(extra) >= 4:
        kind, length = struct.unpack("<HH", extra[:4])
        if kind == 1 and length >= 16:
            return struct.unpack("<QQ", extra[4:20])[1]
        extra = extra[4 + length:]
    return -1


def _twice(scan: ZipScan, name: str, pos: int) -> FoundRecord:
    """Two intact records of one name: a damaged header renamed one of them; neither is trusted."""
    scan.damaged.append(DamagedRecord(name, pos, "a second record has the same name: a header was damaged"))
    return scan.found[name]


def _drop_duplicates(scan: ZipScan) -> None:
    for record in scan.damaged:
        if record.reason.startswith("a second record") and record.name in scan.found:
            first = scan.found.pop(record.name)
            scan.damaged.append(DamagedRecord(record.name, first.header_offset,
                                              "a second record has the same name: a header was damaged"))
