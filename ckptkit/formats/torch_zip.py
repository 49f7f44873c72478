"""`torch.save` zip archives (torch >= 1.6): `<name>/data.pkl` plus one stored record per storage.

Only the central directory and `data.pkl` are read. A storage record's byte position needs its
local header (torch pads records to 64-byte alignment with a local extra field), so it is
resolved lazily, when somebody asks for the bytes.
"""
from __future__ import annotations

import errno
import io
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from ckptkit.core.byte_source import FileBytes
from ckptkit.core.checkpoint import ByteRange, Checkpoint, StorageRef
from ckptkit.core.errors import CorruptCheckpointError, NotACheckpointError, UnsupportedFeatureError
from ckptkit.formats.base import (
    TEXT_PERSISTENT_IDS,
    checkpoint_from_tree,
    unpickle_or_raise,
    weights_only_pickle_findings,
)
from ckptkit.formats.pickle_members import MAX_MEMBER_BYTES, read_zip_pickles, refused_member_error
from ckptkit.formats.zip_directory import (
    ZipDirectory,
    crcs_recorded,
    member_fits,
    read_directory,
    read_member,
    read_member_as_torch_does,
    skip_data_archive,
)
from ckptkit.storage.pickle_writer import dumps_tree
from ckptkit.storage.safe_pickle import StorageType, UnpickleResult, safe_loads

ZIP_MAGIC = b"PK\x03\x04"
LOCAL_HEADER = _LOCAL_HEADER = struct.Struct("<4s5HLLLHH")   # public: salvage scans by it


class TorchScriptArchiveError(NotACheckpointError):
    """A torch.jit.save archive: a torch zip layout, but a compiled model, not a checkpoint."""


class TorchZipFormat:
    name = "torch-zip"
    description = "torch.save zip archive (torch >= 1.6): .pt/.pth/.bin/.ckpt"

    def sniff(self, path: Path, head: bytes) -> bool:
        return head.startswith(ZIP_MAGIC)

    def read(self, path: Path) -> Checkpoint:
        try:
            result, members = read_zip_pickle(path)
        except TorchScriptArchiveError:
            raise
        except NotACheckpointError:
            # Not a torch.save layout; torch.load, numpy.load or a script may still unpickle its
            # members, so each pickle member is read and judged (formats/pickle_members.py).
            return _read_other_zip(path)
        ckpt = checkpoint_from_tree(path, self.name, result.value, result.globals)
        ckpt.findings.extend(weights_only_pickle_findings(path, path.name, result.torch_refuses))
        ckpt.details.zip_prefix = members["zip_prefix"]
        ckpt.details.storage_records = int(members["storage_records"])
        ckpt.details.skip_data = "skip_data" in members
        return ckpt


def _read_other_zip(path: Path) -> Checkpoint:

    with zipfile.ZipFile(path) as zf:
        tree, globals_ = read_zip_pickles(path, zf)
    return checkpoint_from_tree(path, "zip-pickles", tree, globals_)


def read_zip_pickle(path: Path, window: tuple[int, int] | None = None,
                    source: FileBytes | None = None) -> tuple[UnpickleResult, dict[str, str]]:
    """Decode a torch zip archive's `data.pkl` into a tree with lazy tensor leaves (the result's value).

    `window` (start, length): the archive lies at that place inside `path` instead of being the
    whole file (each item of a DCP `.distcp` file is a complete torch.save archive); its tensors
    then keep their strides and storage offsets exactly as from a file of their own.
    `source`: the map of `path` its tensors read through (shared by the items of one file).
    """
    with open(path, "rb") as f:
        return _read_zip_pickle(path, FileSlice(f, *window) if window else f, window[0] if window else 0, source)


def _read_zip_pickle(path: Path, opened: Any, base: int,
                     source: FileBytes | None) -> tuple[UnpickleResult, dict[str, str]]:
    index = read_archive_index(path, opened)
    result, storages = decode_data_pkl(path, index, base, source)
    details = {"zip_prefix": index.prefix, "storage_records": str(len(storages))}
    if skip_data_archive(index.infos):
        details["skip_data"] = "yes"
    return result, details


def _plain_archive_index(source: Any) -> ArchiveIndex | None:
    """The index of a plain archive (what torch writes) read without zipfile's ZipInfos; None
    when anything is unusual, for zipfile to read (and word the error) instead."""
    infos = read_directory(source)
    if infos is None:
        return None
    pickles = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pickles:
        return None
    prefix = pickles[0][: -len("data.pkl")]
    check = crcs_recorded(infos)
    data = read_member(source, infos[pickles[0]], check)
    order = infos.get(prefix + "byteorder")
    byteorder = read_member(source, order, check) if order is not None else b"little"
    if data is None or byteorder != b"little":
        return None
    return ArchiveIndex(infos, prefix.rstrip("/"), data)


@dataclass
class ArchiveIndex:
    """What a reader takes from a torch zip archive before decoding: its directory and data.pkl."""

    infos: Mapping[str, Any]   # the central directory by member name: zipfile.ZipInfo or ZipEntry (same fields)
    prefix: str                          # "archive" for <prefix>/data.pkl
    data_pkl: bytes

    def record_info(self, key: str) -> zipfile.ZipInfo | None:
        return self.infos.get(f"{self.prefix}/data/{key}")

    def record_size(self, key: str) -> int | None:
        """The stored size of record `key` (None when it is missing), as `record_info(key).file_size`."""
        name = f"{self.prefix}/data/{key}"
        if isinstance(self.infos, ZipDirectory):
            return self.infos.file_size(name)
        info = self.infos.get(name)
        return info.file_size if info is not None else None


def read_archive_index(path: Path, source: Any = None) -> ArchiveIndex:
    """The archive's directory and data.pkl bytes, found as every reader finds them (`source`: an
    open file or window of it holding the archive; default: the file at `path`)."""
    if source is None:
        with open(path, "rb") as f:
            return read_archive_index(path, f)
    fast = _plain_archive_index(source)
    if fast is not None:
        return _versioned(path, fast)
    source.seek(0)
    try:
        zf = zipfile.ZipFile(source)
    except zipfile.BadZipFile:
        raise CorruptCheckpointError(path, "zip archive is truncated or damaged (no end-of-central-"
                                     "directory record): the save was probably interrupted") from None
    except (ValueError, EOFError, struct.error, NotImplementedError) as exc:   # a damaged directory entry
        raise CorruptCheckpointError(path, f"zip central directory is damaged ({type(exc).__name__}: "
                                     f"{str(exc)[:120]})") from None
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        pickles = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise NotACheckpointError(path, "a zip archive, but not a torch.save checkpoint (no <name>/data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        size = source.seek(0, 2)
        for name in (pickles[0], prefix + "byteorder"):
            if name in infos and not member_fits(infos[name], size):
                raise CorruptCheckpointError(path, f"{name}: its zip directory entry says "
                                             f"{infos[name].compress_size:,} bytes, more than the archive's "
                                             f"{size:,}: the directory is damaged")
        try:
            data = zf.read(pickles[0])
            byteorder = zf.read(prefix + "byteorder").decode() if prefix + "byteorder" in infos else "little"
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError,
                zlib.error) as exc:   # a flipped method byte makes zipfile inflate stored bytes
            raw = read_member_as_torch_does(source, infos[pickles[0]], MAX_MEMBER_BYTES)
            order = infos.get(prefix + "byteorder")
            byteorder_raw = read_member_as_torch_does(source, order, 16) if order is not None else b"little"
            if crcs_recorded(infos) or raw is None or len(raw) != infos[pickles[0]].file_size or byteorder_raw is None:
                raise refused_member_error(path, pickles[0], exc, raw) from None
            data, byteorder = raw, byteorder_raw.decode("ascii", "replace")   # written without CRC-32s
    if byteorder != "little":
        raise UnsupportedFeatureError(path, f"tensor data is {byteorder}-endian; ckptkit reads little-endian only")
    return _versioned(path, ArchiveIndex(infos, prefix.rstrip("/"), data))


def _versioned(path: Path, index: ArchiveIndex) -> ArchiveIndex:
    """torch's PyTorchStreamReader refuses an archive with no version record ('Expected
    hasRecord("version") to be true'): torch.save writes `version` (newer torch `.data/version`).
    A TorchScript archive (torch.jit.save) is no checkpoint: torch.load tells it by constants.pkl."""
    if f"{index.prefix}/constants.pkl" in index.infos:
        raise TorchScriptArchiveError(path, "a TorchScript archive (torch.jit.save): a compiled model with its code, "
                                  "loaded with torch.jit.load, not a torch.save checkpoint; torch.load(weights_only="
                                  "True) refuses it, and ckptkit does not read it")
    if not any(f"{index.prefix}/{name}" in index.infos for name in ("version", ".data/version")):
        raise CorruptCheckpointError(path, f"{index.prefix}/version is missing from the zip archive, and torch.load "
                                     "refuses an archive without it (its records are readable: `ckptkit salvage` "
                                     "writes them into a whole one)")
    return index


def decode_data_pkl(path: Path, index: ArchiveIndex, base: int = 0,
                    source: FileBytes | None = None) -> tuple[UnpickleResult, dict[str, StorageRef]]:
    """Unpickle `index.data_pkl` into a tree (the result's value) whose storages are located through `index.infos`
    (lazily: a storage whose record is missing fails only when its bytes are asked for) and read
    through `source` (default: a map of `path` of their own, made when first read)."""
    what = f"{index.prefix}/data.pkl"
    storages: dict[str, StorageRef] = {}
    locate = RecordLocator(path, index, base, source)

    def persistent_load(pid: Any) -> StorageRef:
        if isinstance(pid, str):
            raise UnsupportedFeatureError(path, TEXT_PERSISTENT_IDS)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CorruptCheckpointError(path, f"unexpected persistent id {ascii(pid)[:80]} in {what}")
        _, stype, key, location, numel = pid
        if not isinstance(stype, StorageType):
            raise CorruptCheckpointError(path, f"storage {key!r} has an unknown storage type")
        key = str(key)
        ref = storages.get(key)
        if ref is None:
            ref = storages[key] = StorageRef(
                key, stype.dtype, int(numel), str(location), locate_key=locate,
                stored_nbytes=index.record_size(key))
        return ref

    return unpickle_or_raise(path, what, lambda: safe_loads(index.data_pkl, persistent_load)), storages


class FileSlice(io.RawIOBase):
    """A read-only window [start, start + length) of an open file, seekable like a file of its own."""

    def __init__(self, f: io.BufferedReader, start: int, length: int) -> None:
        self._f, self._start, self._length, self._pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self._length - self._pos))
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


class RecordLocator:
    """Where each storage record of one archive lies, as a reader finds it: `locator(key)`.

    A record's local header is read through the file's map when that record is first asked
    for (no system call per record, and `validate` reading the 20,000 one-element `step`
    tensors of an optimizer touches only theirs). A record whose header is damaged or missing
    raises only when that record is asked for.
    """

    def __init__(self, path: Path, index: ArchiveIndex, base: int = 0, source: FileBytes | None = None) -> None:
        # Without data.pkl's bytes: the locator lives as long as the checkpoint's tensors do.
        self.path, self.index, self.base = path, ArchiveIndex(index.infos, index.prefix, b""), base
        self.source = source if source is not None else FileBytes(path)
        self._found: dict[str, ByteRange | CorruptCheckpointError | UnsupportedFeatureError] = {}

    def __call__(self, key: str) -> ByteRange:
        found = self._found.get(key)
        if found is None:
            try:
                found = locate_record(self.path, self.index.record_info(key), key, self.base,
                                      view=self.source.view(), source=self.source)
            except (CorruptCheckpointError, UnsupportedFeatureError) as exc:
                found = exc
            self._found[key] = found
        if isinstance(found, Exception):
            raise found
        return found


@dataclass
class ArchiveStorages:
    """Storages of one archive that this module's reader found: their positions in the list
    asked about, their member names, and the range each was found at already (None while it
    has not been looked for), with the archive's file, map and central directory."""

    path: Path
    source: FileBytes
    directory: Mapping[str, Any]
    positions: list[int]
    names: list[str]
    found: list[ByteRange | None]


def archive_storages(storages: Sequence[StorageRef]) -> list[ArchiveStorages]:
    """The storages among `storages` that this module's reader found in archives that start their
    file, grouped by archive; every other storage is left out. A pass over every member at once
    (`validate --deep`) then needs no local-header read per storage, nor a second read of the
    directory. One archive's storages come in a row: the loop does little more than compare
    each one's locator with the last."""
    groups: dict[int, tuple[RecordLocator, list[int]]] = {}
    last: object = None
    positions: list[int] | None = None
    for i, locator in enumerate(map(attrgetter("shared_locator"), storages)):
        if locator is not last:
            last, positions = locator, None
            if isinstance(locator, RecordLocator) and locator.base == 0:
                positions = groups.setdefault(id(locator), (locator, []))[1]
        if positions is not None:
            positions.append(i)
    out = []
    for locator, positions in groups.values():
        mine = list(map(storages.__getitem__, positions))
        out.append(ArchiveStorages(locator.path, locator.source, locator.index.infos, positions,
                                   list(map(f"{locator.index.prefix}/data/".__add__, map(attrgetter("key"), mine))),
                                   list(map(attrgetter("found"), mine))))
    return out


def locate_record(path: Path, info: zipfile.ZipInfo | None, key: str, base: int = 0,
                  f: BinaryIO | None = None, *, view: memoryview | None = None,
                  source: FileBytes | None = None) -> ByteRange:
    """Where storage record `key` lies in `path`; `base`: where the archive starts in the file
    (DCP `.distcp` files concatenate whole torch.save archives); `f`: `path`, opened already;
    `view`: `path`'s bytes, mapped already; `source`: the map the range is read through."""
    if info is None:
        raise CorruptCheckpointError(path, f"storage record data/{key} is missing from the archive")
    if info.compress_type != zipfile.ZIP_STORED:
        raise UnsupportedFeatureError(path, f"storage record data/{key} is compressed; torch never writes that")
    if base + info.header_offset < 0:
        raise CorruptCheckpointError(path, f"storage record data/{key}: the zip directory points before the "
                                     "start of the archive")
    at = base + info.header_offset
    raw: bytes | memoryview
    if view is not None:
        raw = view[at: at + _LOCAL_HEADER.size]
    elif f is None:
        with open(path, "rb") as own:
            return locate_record(path, info, key, base, own, source=source)
    else:
        f.seek(at)
        raw = f.read(_LOCAL_HEADER.size)
    if len(raw) < _LOCAL_HEADER.size or raw[:4] != ZIP_MAGIC:
        raise CorruptCheckpointError(path, f"storage record data/{key}: local zip header is damaged")
    name_len, extra_len = _LOCAL_HEADER.unpack(raw)[-2:]
    return ByteRange(path, at + _LOCAL_HEADER.size + name_len + extra_len, info.file_size, source)


# --- writing -----------------------------------------------------------------------------------

ALIGNMENT = 64                      # torch aligns storage records so they can be mmap'd
PAGE = 4096
_PADDING_TAG = 0x4246               # "FB": the extra-field id torch's own writer pads with
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)   # fixed, so equal content gives equal bytes


def write_torch_zip(out: Any, tree: Any, prefix: str = "archive", chunk_size: int = 16 << 20,
                    known_crcs: dict[str, int] | None = None,
                    record_written: Callable[[str, int, int], None] | None = None,
                    dumped: tuple[bytes, dict[str, StorageRef]] | None = None) -> None:
    """Write `tree` as a torch.save zip archive to the binary file `out`.

    Tensors are written from their StorageRefs: each storage record is copied byte for byte from
    where it lies now (one chunk in memory at a time); only data.pkl is produced anew. Records
    whose CRC32 is in `known_crcs` (a repair copying from an archive that already holds them)
    are copied by the kernel (copy_file_range: no pass through this process's memory); the
    caller must read them back to check them, as no CRC is computed here for those.
    `record_written(key, offset, length)` is called as each such record lands in `out`, so the
    caller can check it while the next one is copied. `dumped`: `dumps_tree(tree)`, where the
    caller has it already.
    """

    data_pkl, storages = dumped if dumped is not None else dumps_tree(tree)
    with zipfile.ZipFile(out, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        _write_member(zf, out, f"{prefix}/data.pkl", [data_pkl], len(data_pkl))
        for name, text in ((".format_version", b"1"), (".storage_alignment", b"64"), ("byteorder", b"little")):
            _write_member(zf, out, f"{prefix}/{name}", [text], len(text))
        for key, storage in storages.items():
            where = storage.byte_range()
            if where.length != storage.nbytes:
                raise CorruptCheckpointError(where.path, f"storage {key!r}: record holds "
                                             f"{where.length} bytes, its tensors need {storage.nbytes}")
            crc = (known_crcs or {}).get(key)
            if crc is not None:
                offset = _write_member(zf, out, f"{prefix}/data/{key}", None, where.length, copy=(where, crc))
                if record_written is not None:
                    record_written(key, offset, where.length)
            else:
                _write_member(zf, out, f"{prefix}/data/{key}", storage.iter_chunks(chunk_size), where.length)
        _write_member(zf, out, f"{prefix}/version", [b"3\n"], 2)
        _write_member(zf, out, f"{prefix}/.data/serialization_id", [b"0" * 40], 40)


def _write_member(zf: zipfile.ZipFile, out: BinaryIO, name: str, chunks: Iterable[bytes] | None, length: int,
                  copy: tuple[ByteRange, int] | None = None) -> int:
    """Write one stored member; returns the offset in `out` where its data starts."""
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED
    zip64 = length >= 0x7FFFFFFF
    # The local header is 30 bytes + name + extra (+ 20 for the zip64 extra); pad it so the
    # data starts on an ALIGNMENT boundary, as torch's own writer does.
    header = _LOCAL_HEADER.size + len(name.encode()) + 4 + (20 if zip64 else 0)
    pad = (-(out.tell() + header)) % ALIGNMENT
    if copy is not None and copy[0].offset % ALIGNMENT == 0:
        # Put the data at the same offset within a page as in the source: the kernel then copies
        # whole pages onto whole pages (a third faster than straddling them); still 64-aligned.
        pad = (copy[0].offset - (out.tell() + header)) % PAGE
    info.extra = struct.pack("<HH", _PADDING_TAG, pad) + b"Z" * pad
    with zf.open(info, mode="w", force_zip64=zip64) as member:
        start = out.tell()
        if copy is not None and all(hasattr(member, a) for a in ("_file_size", "_compress_size", "_crc")):
            where, crc = copy
            _copy_range(where, out)
            # zipfile fills the headers from these on close; the data went around its write().
            counters = cast(_ZipWriteCounters, member)
            counters._file_size = counters._compress_size = where.length
            counters._crc = crc
            return start
        if chunks is None:
            if copy is None:
                raise ValueError(f"{name}: nothing to write (neither chunks nor a range to copy)")
            chunks = _range_chunks(copy[0])
        for chunk in chunks:
            member.write(chunk)
    return start


class _ZipWriteCounters(Protocol):
    """The private counters of the member writer zipfile.ZipFile.open(mode="w") returns
    (zipfile._ZipWriteFile); _write_member checks they exist before setting them."""

    _file_size: int
    _compress_size: int
    _crc: int


def _copy_range(where: ByteRange, out: BinaryIO) -> None:
    """Append `where`'s bytes to `out` at its position: in the kernel where it can, else by chunks."""
    out.flush()
    start = out.tell()
    fd = os.open(where.path, os.O_RDONLY)
    try:
        done = 0
        while done < where.length:
            try:
                n = os.copy_file_range(fd, out.fileno(), where.length - done, where.offset + done, start + done)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
                    raise
                n = _copy_by_chunks(fd, out.fileno(), where.offset + done, start + done, where.length - done)
            if n == 0:
                raise CorruptCheckpointError(where.path, "file ends inside a storage record (truncated)")
            done += n
    finally:
        os.close(fd)
    out.seek(start + where.length)


def _copy_by_chunks(src: int, dst: int, src_offset: int, dst_offset: int, length: int) -> int:
    buf = bytearray(min(length, 8 << 20))
    view = memoryview(buf)
    done = 0
    while done < length:
        n = os.preadv(src, [view[: min(len(buf), length - done)]], src_offset + done)
        if n == 0:
            break
        os.pwrite(dst, view[:n], dst_offset + done)
        done += n
    return done


def _range_chunks(where: ByteRange, chunk_size: int = 8 << 20) -> Iterator[bytes]:
    with open(where.path, "rb") as f:
        f.seek(where.offset)
        left = where.length
        while left:
            chunk = f.read(min(chunk_size, left))
            if not chunk:
                raise CorruptCheckpointError(where.path, "file ends inside a storage record (truncated)")
            left -= len(chunk)
            yield chunk
