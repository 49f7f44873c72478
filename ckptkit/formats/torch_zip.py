"""`torch.save` zip archives (torch >= 1.6): `<name>/data.pkl` plus one stored record per storage.

Only the central directory and `data.pkl` are read. A storage record's byte position needs its
local header (torch pads records to 64-byte alignment with a local extra field), so it is
resolved lazily, when somebody asks for the bytes.
"""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Any

from ckptkit.checkpoint import ByteRange, Checkpoint, StorageRef
from ckptkit.errors import CorruptCheckpointError, NotACheckpointError, UnsupportedFeatureError
from ckptkit.formats.base import unpickle_or_raise
from ckptkit.safe_pickle import StorageType, safe_loads

ZIP_MAGIC = b"PK\x03\x04"
_LOCAL_HEADER = struct.Struct("<4s5HLLLHH")


class TorchZipFormat:
    name = "torch-zip"
    description = "torch.save zip archive (torch >= 1.6): .pt/.pth/.bin/.ckpt"

    def sniff(self, path: Path, head: bytes) -> bool:
        return head.startswith(ZIP_MAGIC)

    def read(self, path: Path) -> Checkpoint:
        from ckptkit.families import build_checkpoint

        tree, globals_, members = read_zip_pickle(path)
        ckpt = build_checkpoint(path, self.name, tree, globals_)
        ckpt.metadata.update(members)
        return ckpt


def read_zip_pickle(path: Path) -> tuple[Any, list[Any], dict[str, str]]:
    """Decode a torch zip archive's `data.pkl` into a tree with lazy tensor leaves."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CorruptCheckpointError(path, "zip archive is truncated or damaged (no end-of-central-"
                                     "directory record): the save was probably interrupted") from None
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        pickles = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise NotACheckpointError(path, "a zip archive, but not a torch.save checkpoint (no <name>/data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        try:
            data = zf.read(pickles[0])
            byteorder = zf.read(prefix + "byteorder").decode() if prefix + "byteorder" in infos else "little"
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise CorruptCheckpointError(path, f"{pickles[0]} is damaged: {exc}") from None
    if byteorder != "little":
        raise UnsupportedFeatureError(path, f"tensor data is {byteorder}-endian; ckptkit reads little-endian only")
    storages: dict[str, StorageRef] = {}

    def persistent_load(pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CorruptCheckpointError(path, f"unexpected persistent id {str(pid)[:80]} in {pickles[0]}")
        _, stype, key, location, numel = pid
        if not isinstance(stype, StorageType):
            raise CorruptCheckpointError(path, f"storage {key!r} has an unknown storage type")
        key = str(key)
        if key not in storages:
            member = infos.get(f"{prefix}data/{key}")
            storages[key] = StorageRef(
                key, stype.dtype, int(numel), str(location),
                locate=lambda m=member, k=key: _locate(path, m, k),
                stored_nbytes=member.file_size if member is not None else None)
        return storages[key]

    result = unpickle_or_raise(path, pickles[0], lambda: safe_loads(data, persistent_load))
    members = {"zip_prefix": prefix.rstrip("/"), "storage_records": str(len(storages))}
    return result.value, result.globals, members


def _locate(path: Path, info: zipfile.ZipInfo | None, key: str) -> ByteRange:
    if info is None:
        raise CorruptCheckpointError(path, f"storage record data/{key} is missing from the archive")
    if info.compress_type != zipfile.ZIP_STORED:
        raise UnsupportedFeatureError(path, f"storage record data/{key} is compressed; torch never writes that")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        raw = f.read(_LOCAL_HEADER.size)
    if len(raw) < _LOCAL_HEADER.size or raw[:4] != ZIP_MAGIC:
        raise CorruptCheckpointError(path, f"storage record data/{key}: local zip header is damaged")
    name_len, extra_len = _LOCAL_HEADER.unpack(raw)[-2:]
    offset = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    return ByteRange(path, offset, info.file_size)
