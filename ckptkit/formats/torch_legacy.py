"""Legacy (pre-zip) `torch.save` files: a stream of pickles followed by raw storage records.

Layout: magic-number pickle, protocol-version pickle, sys-info pickle, the object pickle (with
persistent ids for storages), a pickle listing storage keys, then for each key in that order an
8-byte little-endian element count followed by the storage's bytes. Reading walks the record
headers with seeks only; no tensor byte is read.
"""
from __future__ import annotations

import functools
import io
import struct
from pathlib import Path
from typing import Any, BinaryIO

from ckptkit.core.byte_source import FileBytes
from ckptkit.core.checkpoint import ByteRange, Checkpoint, StorageRef
from ckptkit.core.errors import CorruptCheckpointError, UnsupportedFeatureError
from ckptkit.formats.base import (
    TEXT_PERSISTENT_IDS,
    checkpoint_from_tree,
    unpickle_or_raise,
    weights_only_pickle_findings,
)
from ckptkit.storage.safe_pickle import StorageType, UnpickleResult, safe_load_stream, safe_loads_from

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
# protocol-2 pickle of MAGIC_NUMBER: PROTO 2, LONG1 10 bytes
MAGIC_PREFIX = b"\x80\x02\x8a\x0a" + MAGIC_NUMBER.to_bytes(10, "little")


def is_legacy_head(head: bytes) -> bool:
    """Whether a file starts as torch's legacy format does: a pickle of MAGIC_NUMBER, in the protocol
    torch.save was given (pickle_protocol=0..5; 2 by default). That pickle is under 30 bytes."""
    if head.startswith(MAGIC_PREFIX):
        return True
    if not head or head[0] not in b"\x80L":    # PROTO, or protocol 0-1's text LONG
        return False
    try:
        value = safe_loads_from(io.BytesIO(head)).value
    except Exception:   # not a whole pickle in the head, so not this one
        return False
    return type(value) is int and value == MAGIC_NUMBER


class TorchLegacyFormat:
    name = "torch-legacy"
    description = "legacy torch.save file (pre-zip; _use_new_zipfile_serialization=False)"

    def sniff(self, path: Path, head: bytes) -> bool:
        return is_legacy_head(head)

    def read(self, path: Path) -> Checkpoint:
        tree, globals_, records, refused = read_legacy(path)
        ckpt = checkpoint_from_tree(path, self.name, tree, globals_)
        ckpt.findings.extend(weights_only_pickle_findings(path, path.name, refused))
        ckpt.details.storage_records = records
        return ckpt


class _Storages:
    """The storages the object pickle names (its persistent ids), and where each one's bytes lie
    once the records after the pickles have been walked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.refs: dict[str, StorageRef] = {}
        self.ranges: dict[str, ByteRange] = {}

    def locate(self, key: str) -> ByteRange:
        if key not in self.ranges:
            raise CorruptCheckpointError(self.path, f"storage {key!r} has no record in the file")
        return self.ranges[key]

    def persistent_load(self, pid: Any) -> StorageRef:
        path = self.path
        if isinstance(pid, str):
            raise UnsupportedFeatureError(path, TEXT_PERSISTENT_IDS)
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) == 6):
            kind = pid[0] if isinstance(pid, tuple) and pid else pid
            raise UnsupportedFeatureError(path, f"legacy persistent id {str(kind)[:40]!r} (whole pickled "
                                          "modules are not supported; save a state_dict instead)")
        _, stype, key, location, numel, view = pid
        if not isinstance(stype, StorageType):
            raise CorruptCheckpointError(path, f"storage {key!r} has an unknown storage type")
        if view is not None:
            raise UnsupportedFeatureError(path, "storage views from torch < 0.4 are not supported")
        key = str(key)
        if key not in self.refs:
            self.refs[key] = StorageRef(key, stype.dtype, int(numel), str(location),
                                        locate=functools.partial(self.locate, key))
        return self.refs[key]


def read_legacy(path: Path) -> tuple[Any, list[Any], int, tuple[str, ...]]:
    """The object pickle's tree, the globals of every pickle, the number of storage records, and
    the opcodes torch's weights-only unpickler stops at, in the order torch.load reads them."""
    storages = _Storages(path)
    with open(path, "rb") as raw:
        f = io.BufferedReader(raw)
        header = _read_header(path, f)
        main = unpickle_or_raise(path, "object pickle", lambda: safe_load_stream(f, storages.persistent_load))
        listing = unpickle_or_raise(path, "storage key list", lambda: safe_load_stream(f))
        keys = listing.value
        if not isinstance(keys, list):
            raise CorruptCheckpointError(path, "storage key list is damaged")
        _walk_records(storages, raw, f.tell(), [str(k) for k in keys])
    refused = tuple(dict.fromkeys(op for r in (*header, main, listing) for op in r.torch_refuses))
    return main.value, [g for h in header for g in h.globals] + main.globals, len(keys), refused


def _read_header(path: Path, f: io.BufferedIOBase) -> list[UnpickleResult]:
    """The magic-number, protocol-version and sys-info pickles, checked."""
    header = [unpickle_or_raise(path, f"header pickle {i + 1}", lambda: safe_load_stream(f))
              for i in range(3)]
    if header[0].value != MAGIC_NUMBER:
        raise CorruptCheckpointError(path, "legacy torch file with a wrong magic number")
    sys_info = header[2].value if isinstance(header[2].value, dict) else {}
    if sys_info.get("little_endian") is False:
        raise UnsupportedFeatureError(path, "tensor data is big-endian; ckptkit reads little-endian only")
    return header


def _walk_records(storages: _Storages, raw: BinaryIO, offset: int, keys: list[str]) -> None:
    """Find each storage's bytes: for every key, in order, an 8-byte element count, then the bytes.
    Seeks over the bytes; reads only the counts."""
    path = storages.path
    size = path.stat().st_size
    source = FileBytes(path)     # the file's map, made when a tensor's bytes are first read
    for key in keys:
        storage = storages.refs.get(key)
        if storage is None:
            raise CorruptCheckpointError(path, f"storage key {key!r} is listed but no tensor uses it")
        raw.seek(offset)
        count = raw.read(8)
        if len(count) < 8:
            raise CorruptCheckpointError(path, f"file ends before storage record {key!r}: truncated")
        numel = struct.unpack("<q", count)[0]
        if numel != storage.numel:
            raise CorruptCheckpointError(path, f"storage record {key!r} holds {numel} elements but the "
                                         f"pickle declares {storage.numel}: the file is damaged")
        length = numel * storage.dtype.itemsize
        storage.stored_nbytes = min(length, max(0, size - offset - 8))
        storages.ranges[key] = ByteRange(path, offset + 8, length, source)
        offset += 8 + length
        if offset > size:
            raise CorruptCheckpointError(
                path, f"storage record {key!r} needs {length} bytes but the file ends "
                      f"{offset - size} bytes early: truncated")
