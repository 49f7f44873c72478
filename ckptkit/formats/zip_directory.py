"""A torch.save archive's central directory, read in one pass without building `zipfile.ZipInfo`s.

`zipfile.ZipFile` spends about 5 us per member making a ZipInfo (date, extra fields, ...); an
archive of 80,000 storage records then costs 0.4 s before data.pkl is even read. torch writes
plain archives (stored members, no encryption, no zip64 sizes below 4 GiB), so this reader
takes the directory's fixed fields with `struct.unpack_from` and reads data.pkl's bytes through
its local header, checking its CRC-32. Anything it does not expect (zip64 sizes, compressed
or encrypted members, a bad signature) makes it return None, and the caller reads the archive
with `zipfile` as before: its error messages for damaged archives stay what they were.
"""
from __future__ import annotations

import struct
import zipfile
import zlib
from typing import Any

_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")      # zipfile.structCentralDir
_LOCAL = struct.Struct("<4s5HLLLHH")
_CENTRAL_MAGIC, _LOCAL_MAGIC = b"PK\x01\x02", b"PK\x03\x04"
_UTF8_NAME, _ENCRYPTED = 0x800, 0x1
_ZIP64 = 0xFFFFFFFF


class ZipEntry:
    """What ckptkit reads of a member: the same attribute names as `zipfile.ZipInfo`."""

    __slots__ = ("filename", "orig_filename", "header_offset", "compress_type", "compress_size",
                 "file_size", "CRC", "flag_bits")

    def __init__(self, filename: str, header_offset: int, compress_type: int, compress_size: int,
                 file_size: int, crc: int, flag_bits: int) -> None:
        self.filename = self.orig_filename = filename
        self.header_offset, self.compress_type = header_offset, compress_type
        self.compress_size, self.file_size, self.CRC, self.flag_bits = compress_size, file_size, crc, flag_bits


def read_directory(source: Any) -> dict[str, ZipEntry] | None:
    """name -> entry for every member of the archive in the open binary file `source`, or None
    when the archive is anything but a plain one (the caller then asks zipfile)."""
    try:
        end = zipfile._EndRecData(source)   # noqa: SLF001 - the EOCD search, zip64 included
    except OSError:
        return None
    if not end:
        return None
    size_cd, offset_cd = end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET]
    concat = end[zipfile._ECD_LOCATION] - size_cd - offset_cd
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
        concat -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    if offset_cd + concat < 0:
        return None
    source.seek(offset_cd + concat)
    data = source.read(size_cd)
    if len(data) != size_cd:
        return None
    return _entries(data, concat)


def _entries(data: bytes, concat: int) -> dict[str, ZipEntry] | None:
    entries: dict[str, ZipEntry] = {}
    pos, unpack, fixed = 0, _CENTRAL.unpack_from, _CENTRAL.size
    while pos < len(data):
        if pos + fixed > len(data):
            return None
        (magic, _, _, version, _, flags, method, _, _, crc, csize, usize, name_len, extra_len, comment_len,
         _, _, _, offset) = unpack(data, pos)
        if (magic != _CENTRAL_MAGIC or flags & _ENCRYPTED or _ZIP64 in (csize, usize, offset)
                or version > zipfile.MAX_EXTRACT_VERSION):
            return None
        raw = data[pos + fixed: pos + fixed + name_len]
        name = raw.decode("utf-8" if flags & _UTF8_NAME else "cp437")
        entries[name] = ZipEntry(name, offset + concat, method, csize, usize, crc, flags)
        pos += fixed + name_len + extra_len + comment_len
    return entries


def read_member(source: Any, entry: ZipEntry) -> bytes | None:
    """A stored member's bytes, its CRC-32 checked; None for anything else (ask zipfile)."""
    if entry.compress_type != zipfile.ZIP_STORED or entry.compress_size != entry.file_size:
        return None
    source.seek(entry.header_offset)
    header = source.read(_LOCAL.size)
    if len(header) != _LOCAL.size or header[:4] != _LOCAL_MAGIC:
        return None
    name_len, extra_len = _LOCAL.unpack(header)[-2:]
    if source.read(name_len) != entry.filename.encode("utf-8" if entry.flag_bits & _UTF8_NAME else "cp437"):
        return None
    source.seek(entry.header_offset + _LOCAL.size + name_len + extra_len)
    data = source.read(entry.file_size)
    if len(data) != entry.file_size or zlib.crc32(data) != entry.CRC:
        return None
    return data
