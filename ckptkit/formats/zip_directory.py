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
from collections.abc import Callable, Iterator, Mapping
from typing import Any

_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")      # zipfile.structCentralDir
_LOCAL = struct.Struct("<4s5HLLLHH")
_FILE_SIZE, _FILE_SIZE_AT = struct.Struct("<L"), struct.calcsize("<4s4B4HLL")   # after magic..csize: usize
_CENTRAL_MAGIC, _LOCAL_MAGIC = b"PK\x01\x02", b"PK\x03\x04"
_UTF8_NAME, _ENCRYPTED = 0x800, 0x1
_ZIP64 = 0xFFFFFFFF
# The end-of-central-directory record as zipfile._EndRecData returns it (APPNOTE 4.3.16: the
# record's fields, then its comment and its offset in the file), and the zip64 records before it.
_ECD_SIGNATURE, _ECD_SIZE, _ECD_OFFSET, _ECD_LOCATION = 0, 5, 6, 9
_ZIP64_END_MAGIC, _ZIP64_END_SIZE, _ZIP64_LOCATOR_SIZE = b"PK\x06\x06", 56, 20
# zipfile's EOCD search (zip64 included) is private, so typeshed omits it: bound once, typed here.
_end_record: Callable[[Any], list[Any] | None] = zipfile._EndRecData  # type: ignore[attr-defined]


class ZipEntry:
    """What ckptkit reads of a member: the same attribute names as `zipfile.ZipInfo`."""

    __slots__ = ("filename", "orig_filename", "header_offset", "compress_type", "compress_size",
                 "file_size", "CRC", "flag_bits", "extract_version", "dos_time_date")

    def __init__(self, filename: str, header_offset: int, compress_type: int, compress_size: int,
                 file_size: int, crc: int, flag_bits: int, extract_version: int,
                 dos_time_date: tuple[int, int]) -> None:
        self.filename = self.orig_filename = filename
        self.header_offset, self.compress_type = header_offset, compress_type
        self.compress_size, self.file_size, self.CRC, self.flag_bits = compress_size, file_size, crc, flag_bits
        self.extract_version, self.dos_time_date = extract_version, dos_time_date   # as stored: (time, date)


class ZipDirectory(Mapping[str, ZipEntry]):
    """name -> ZipEntry, made when asked for: the directory's bytes and one position per name
    are all that is kept (80,000 ZipEntry objects would hold three times the memory)."""

    def __init__(self, data: bytes, positions: dict[str, int], concat: int) -> None:
        self._data, self._positions, self._concat = data, positions, concat

    def __getitem__(self, name: str) -> ZipEntry:
        (_, _, _, version, _, flags, method, time, date, crc, csize, usize, _, _, _, _, _, _,
         offset) = _CENTRAL.unpack_from(self._data, self._positions[name])
        return ZipEntry(name, offset + self._concat, method, csize, usize, crc, flags, version, (time, date))

    def file_size(self, name: str) -> int | None:
        """The member's uncompressed size (None when absent), without building its ZipEntry:
        asked once per storage record while data.pkl is decoded."""
        pos = self._positions.get(name)
        return None if pos is None else int(_FILE_SIZE.unpack_from(self._data, pos + _FILE_SIZE_AT)[0])

    def __contains__(self, name: object) -> bool:
        return name in self._positions

    def __iter__(self) -> Iterator[str]:
        return iter(self._positions)

    def __len__(self) -> int:
        return len(self._positions)

    def layout(self) -> tuple[bytes, dict[str, int], int]:
        """The directory's bytes, where each name's entry starts in them, and where the archive
        starts in its file: for a reader that checks every entry at once (`--deep`)."""
        return self._data, self._positions, self._concat


def read_directory(source: Any) -> ZipDirectory | None:
    """name -> entry for every member of the archive in the open binary file `source`, or None
    when the archive is anything but a plain one (the caller then asks zipfile)."""
    try:
        end = _end_record(source)
    except (OSError, zipfile.BadZipFile, struct.error, ValueError, EOFError):
        return None                         # damaged: zipfile says how, in the caller
    if not end:
        return None
    size_cd, offset_cd = end[_ECD_SIZE], end[_ECD_OFFSET]
    concat = end[_ECD_LOCATION] - size_cd - offset_cd
    if end[_ECD_SIGNATURE] == _ZIP64_END_MAGIC:
        concat -= _ZIP64_END_SIZE + _ZIP64_LOCATOR_SIZE
    if offset_cd + concat < 0:
        return None
    source.seek(offset_cd + concat)
    data = source.read(size_cd)
    if len(data) != size_cd:
        return None
    return _entries(data, concat)


def _entries(data: bytes, concat: int) -> ZipDirectory | None:
    """Every entry checked to be plain (else None), its position kept."""
    positions: dict[str, int] = {}
    pos, unpack, fixed = 0, _CENTRAL.unpack_from, _CENTRAL.size
    while pos < len(data):
        if pos + fixed > len(data):
            return None
        (magic, _, _, version, _, flags, _, _, _, _, csize, usize, name_len, extra_len, comment_len,
         _, _, _, offset) = unpack(data, pos)
        if (magic != _CENTRAL_MAGIC or flags & _ENCRYPTED or _ZIP64 in (csize, usize, offset)
                or version > zipfile.MAX_EXTRACT_VERSION):
            return None
        raw = data[pos + fixed: pos + fixed + name_len]
        try:
            name = raw.decode("utf-8" if flags & _UTF8_NAME else "cp437")
        except UnicodeDecodeError:
            return None
        positions[name] = pos
        pos += fixed + name_len + extra_len + comment_len
    return ZipDirectory(data, positions, concat)


def member_fits(info: Any, archive_size: int) -> bool:
    """Whether a directory entry's stored bytes can lie inside an archive of `archive_size` bytes.

    Checked before a member is read: a damaged size field (a flipped high byte of a central
    directory entry) would otherwise make the read allocate gigabytes for a file of kilobytes.
    Stored members are as large as their bytes on disk; a compressed one is bounded by its
    compressed size only.
    """
    stored = info.compress_type == zipfile.ZIP_STORED
    return (info.header_offset + info.compress_size <= archive_size
            and (not stored or info.file_size <= archive_size))


def _local_header(source: Any, offset: int) -> tuple[bytes, int] | None:
    """The name a member's local header at `offset` gives, and where its data starts; None
    when no local header is there."""
    source.seek(offset)
    header = source.read(_LOCAL.size)
    if len(header) != _LOCAL.size or header[:4] != _LOCAL_MAGIC:
        return None
    name_len, extra_len = _LOCAL.unpack(header)[-2:]
    return source.read(name_len), offset + _LOCAL.size + name_len + extra_len


def crcs_recorded(infos: Mapping[str, Any]) -> bool:
    """Whether the archive's directory holds CRC-32s. torch writes 0 for every member after
    `torch.serialization.set_crc32_options(False)` (faster saves) and its reader never checks
    them; a member of real bytes has CRC 0 once in 2**32, so an archive whose every non-empty
    member says 0 was written without them (one that says 0 among real ones is damaged).
    Stops at the first member with a CRC (torch's first, data.pkl, has one): an archive of
    80,000 records is not walked, nor a ZipEntry made per member."""
    sized = False
    for name in infos:
        info = infos[name]
        if info.file_size:
            if info.CRC:
                return True
            sized = True
    return not sized


def is_storage_record(name: str) -> bool:
    """`<archive>/data/<key>`: a torch archive's storage record (not `.data/serialization_id`)."""
    parts = name.split("/")
    return len(parts) == 3 and parts[1] == "data"


def skip_data_archive(infos: Mapping[str, Any]) -> bool:
    """Whether torch.save wrote the archive under `torch.serialization.skip_data()`: it reserves
    each storage record's bytes for a later pass to fill in (zeros until then) and writes CRC 0
    for every one of them, while its other records (data.pkl, version, ...) carry real ones;
    torch.load never checks them. A storage record saying 0 among storage records with a CRC is
    damaged instead. Stops at the first storage record with a CRC (torch writes them right after
    data.pkl and byteorder), so a plain archive of 80,000 records is not walked."""
    sized = False
    for name in infos:
        if is_storage_record(name):
            info = infos[name]
            if info.file_size:
                if info.CRC:
                    return False
                sized = True
    return sized and crcs_recorded(infos)


def storage_crcs_recorded(infos: Mapping[str, Any]) -> bool:
    """Whether the directory's CRC-32s of the storage records are the bytes' own: not when the
    archive was written without CRC-32s, nor under skip_data (a writer then computes them)."""
    return crcs_recorded(infos) and not skip_data_archive(infos)


def read_member(source: Any, entry: ZipEntry, check_crc: bool = True) -> bytes | None:
    """A stored member's bytes, its CRC-32 checked (unless the archive has none,
    `crcs_recorded`); None for anything else (ask zipfile)."""
    if entry.compress_type != zipfile.ZIP_STORED or entry.compress_size != entry.file_size:
        return None
    if not member_fits(entry, source.seek(0, 2)):
        return None
    local = _local_header(source, entry.header_offset)
    if local is None or local[0] != entry.filename.encode("utf-8" if entry.flag_bits & _UTF8_NAME else "cp437"):
        return None
    source.seek(local[1])
    data: bytes = source.read(entry.file_size)
    if len(data) != entry.file_size or (check_crc and zlib.crc32(data) != entry.CRC):
        return None
    return data


def read_member_as_torch_does(source: Any, info: Any, limit: int) -> bytes | None:
    """A member's bytes as PyTorch's own reader takes them, for the safety verdict on a member
    `zipfile` refuses: the local header's lengths, and no check of the CRC-32 (PyTorch builds
    miniz with MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS), of the flag bits or of the local name.
    Stored or deflated, at most `limit` bytes; None when even that cannot be read."""
    if not 0 <= info.header_offset < source.seek(0, 2):
        return None
    local = _local_header(source, info.header_offset)
    if local is None:
        return None
    source.seek(local[1])
    raw: bytes = source.read(min(info.compress_size, limit))
    if info.compress_type == zipfile.ZIP_STORED:
        return raw
    if info.compress_type != zipfile.ZIP_DEFLATED:
        return None
    try:
        return zlib.decompressobj(-15).decompress(raw, limit)
    except zlib.error:
        return None
