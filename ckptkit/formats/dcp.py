"""`torch.distributed.checkpoint` folders: `.metadata` + `__{rank}_{i}.distcp`.

`.metadata` is a plain pickle of DCP's dataclasses (torch/distributed/checkpoint/metadata.py),
read here with the restricted unpickler: they become inert stubs whose fields are mapped below.
`state_dict_metadata` gives every tensor's global shape, dtype and chunks; `storage_data` says
where each chunk (and each non-tensor "bytes" item) lies: a file, an offset and a length.
With DCP's default serialization each item is a complete torch.save archive, concatenated into
the `.distcp` file. Non-tensor items (optimizer hyper-parameters, counters) are small and read
to build the state tree; tensor chunks are only located, never read, until someone asks.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from ckptkit.checkpoint import ByteRange, Checkpoint, Severity, StorageRef, TensorChunk, TensorRef, make_tensor
from ckptkit.dtypes import dtype_named
from ckptkit.errors import CkptkitError, CorruptCheckpointError, UnsupportedFeatureError
from ckptkit.formats.base import security_findings, unpickle_or_raise
from ckptkit.formats.folder import FolderReading
from ckptkit.formats.torch_zip import ZIP_MAGIC, locate_record
from ckptkit.safe_pickle import GlobalRef, PickledObject, TorchDtypeValue, safe_loads


class TensorInChunksError(UnsupportedFeatureError):
    """A tensor saved in several chunks has no single byte range; read `Checkpoint.chunks` instead."""

METADATA = ".metadata"
# The names DCP's own metadata pickle refers to; only these are expected there.
_EXPECTED_GLOBALS = ("torch.distributed.checkpoint.", "torch.serialization._get_layout",
                     "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePosixPath")
Location = tuple[str, int, int]   # file, offset, length


class DcpFormat:
    name = "dcp"
    description = "torch.distributed.checkpoint folder (.metadata + *.distcp)"

    def sniff(self, path: Path, head: bytes) -> bool:
        try:
            with open(path / METADATA, "rb") as f:
                first = f.read(2)
        except OSError:
            return False
        return len(first) == 2 and first[0] == 0x80 and 2 <= first[1] <= 5

    def read(self, path: Path) -> Checkpoint:
        try:
            return self._read(path)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
            # .metadata is a pickle of nested objects: damage shows up as values of the wrong shape.
            raise CorruptCheckpointError(path / METADATA, f"DCP metadata is damaged ({type(exc).__name__}: "
                                         f"{str(exc)[:120]})") from None

    def _read(self, path: Path) -> Checkpoint:
        from ckptkit.families import build_checkpoint

        meta_path = path / METADATA
        result = unpickle_or_raise(meta_path, "DCP .metadata", lambda: safe_loads(meta_path.read_bytes()))
        fields = _fields_of(result.value, "Metadata", meta_path)
        reading = FolderReading(path)
        reading.members[METADATA] = _member(path, METADATA, "DCP metadata (tensor index)", "pickle")
        locations = _storage_index(fields.get("storage_data"), meta_path)
        for file in sorted({loc[0] for loc in locations.values()}):
            reading.members[file] = _member(path, file, "DCP data", "dcp-items")
        layout = DcpLayout(path, reading, locations)
        tree = layout.build_tree(fields.get("state_dict_metadata"), fields.get("planner_data") or {})
        ckpt = build_checkpoint(path, self.name, tree, [])
        done = reading.finish(self.name, ckpt.family, ckpt.progress)
        ckpt.size_bytes, ckpt.files, ckpt.members = done.size_bytes, done.files, done.members
        ckpt.chunks = layout.chunks
        ckpt.findings = _unexpected_globals(meta_path, result.globals) + reading.findings + ckpt.findings
        ckpt.metadata.update({"dcp_version": str(fields.get("version")), "tensors": str(len(layout.chunks))})
        storage_meta = fields.get("storage_meta")
        if isinstance(storage_meta, PickledObject) and storage_meta.fields().get("save_id"):
            ckpt.metadata["save_id"] = str(storage_meta.fields()["save_id"])
        return ckpt


class DcpLayout:
    """Turns DCP's flat {fqn: storage metadata} into a nested state tree with lazy tensors."""

    def __init__(self, path: Path, reading: FolderReading, locations: dict[tuple[str, Any], Location]) -> None:
        self.path, self.reading, self.locations = path, reading, locations
        self.chunks: dict[str, list[TensorChunk]] = {}
        self._missing_files: set[str] = set()
        self._sizes: dict[str, int | None] = {}

    def build_tree(self, state_meta: Any, planner: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(state_meta, dict):
            raise CorruptCheckpointError(self.path / METADATA, "no state_dict_metadata: not a DCP checkpoint index")
        tree: dict[str, Any] = {}
        for fqn, meta in state_meta.items():
            fqn = str(fqn)
            value = self._tensor(fqn, meta) if _is_tensor_meta(meta) else self._value(fqn)
            keys = planner.get(fqn)
            _insert(tree, list(keys) if isinstance(keys, (tuple, list)) and keys else [fqn], value)
        return _lists_from_int_keys(tree)

    def _tensor(self, fqn: str, meta: PickledObject) -> TensorRef:
        f = meta.fields()
        shape = tuple(int(d) for d in f.get("size") or ())
        dtype = _dtype(f.get("properties"), self.path / METADATA, fqn)
        chunks: list[TensorChunk] = []
        for chunk in f.get("chunks") or []:
            c = chunk.fields() if isinstance(chunk, PickledObject) else {}
            offsets, sizes = tuple(c.get("offsets") or ()), tuple(int(d) for d in c.get("sizes") or ())
            loc = self.locations.get((fqn, offsets))
            if loc is None:
                self.reading.add_finding("dcp.missing-chunk", Severity.ERROR, METADATA,
                                         f"tensor {fqn!r}: chunk at offsets {list(offsets)} has no storage entry")
                continue
            self._check_file(loc, fqn)
            storage = StorageRef(f"{fqn}@{list(offsets)}", dtype, _numel(sizes), "cpu",
                                 locate=lambda loc=loc, n=_numel(sizes) * dtype.itemsize: self._locate(fqn, loc, n))
            chunks.append(TensorChunk(offsets, sizes, loc[0], loc[1], loc[2], make_tensor(dtype.name, sizes, storage)))
        self.chunks[fqn] = chunks
        if len(chunks) == 1 and chunks[0].sizes == shape and chunks[0].tensor is not None:
            return chunks[0].tensor
        count = len(chunks)

        def split() -> ByteRange:
            raise TensorInChunksError(self.path, f"tensor {fqn!r} is stored in {count} chunks; read them "
                                          "one by one (Checkpoint.chunks) or assemble them first")
        return make_tensor(dtype.name, shape, StorageRef(fqn, dtype, _numel(shape), "cpu", locate=split))

    def _locate(self, fqn: str, loc: Location, nbytes: int) -> ByteRange:
        file = self.path / loc[0]
        if loc[2] == nbytes and _peek(file, loc[1]) != ZIP_MAGIC:
            return ByteRange(file, loc[1], loc[2])   # SAFETENSORS serialization: the raw bytes
        return _item_tensor_range(file, loc[1], loc[2], fqn)

    def _value(self, fqn: str) -> Any:
        loc = self.locations.get((fqn, None))
        if loc is None or not self._check_file(loc, fqn):
            return None
        file = self.path / loc[0]
        try:
            with open(file, "rb") as f, zipfile.ZipFile(FileSlice(f, loc[1], loc[2])) as zf:
                name = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
                result = safe_loads(zf.read(name))
        except Exception as exc:   # whatever fails while decoding the item, its bytes are not what DCP writes
            self.reading.add_finding("dcp.unreadable-item", Severity.ERROR, loc[0],
                                     f"item {fqn!r} at bytes {loc[1]}..{loc[1] + loc[2]} cannot be read "
                                     f"({type(exc).__name__})")
            return None
        self.reading.findings.extend(security_findings(file, f"{self.path.name}/{loc[0]}: {fqn}", result.globals))
        return result.value

    def _check_file(self, loc: Location, fqn: str) -> bool:
        if loc[0] not in self._sizes:
            file = self.path / loc[0]
            self._sizes[loc[0]] = file.stat().st_size if file.is_file() else None
        size = self._sizes[loc[0]]
        if size is None:
            if loc[0] not in self._missing_files:
                self._missing_files.add(loc[0])
                self.reading.add_finding("dcp.missing-file", Severity.ERROR, loc[0],
                                         f"the metadata places items (e.g. {fqn!r}) in {loc[0]}, which is missing: "
                                         "a rank's save did not finish or the file was not copied")
            return False
        if loc[1] + loc[2] > size:
            self.reading.add_finding("dcp.truncated", Severity.ERROR, loc[0],
                                     f"item {fqn!r} ends at byte {loc[1] + loc[2]} but the file has {size}: truncated")
            return False
        return True


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


def _item_tensor_range(file: Path, start: int, length: int, fqn: str) -> ByteRange:
    """The bytes of the tensor inside one torch.save archive embedded at `start` of `file`."""
    records: dict[str, Any] = {}

    def persistent_load(pid: Any) -> StorageRef:
        key = str(pid[2])
        records[key] = StorageRef(key, pid[1].dtype, int(pid[4]), str(pid[3]), locate=lambda: ByteRange(file, 0, 0))
        return records[key]

    try:
        with open(file, "rb") as f, zipfile.ZipFile(FileSlice(f, start, length)) as zf:
            name = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
            tensor = safe_loads(zf.read(name), persistent_load).value
            info = zf.getinfo(name[: -len("data.pkl")] + f"data/{tensor.storage.key}")
    except CkptkitError:
        raise
    except Exception as exc:   # whatever fails while decoding the item (zipfile raises many kinds), it is damaged
        raise CorruptCheckpointError(file, f"tensor {fqn!r}: stored item at byte {start} is damaged "
                                     f"({type(exc).__name__})") from None
    if not tensor.is_contiguous():
        # DCP keeps an item's storage compact but not necessarily contiguous (a transposed
        # weight keeps its strides); the chunk is described as contiguous, so its bytes would
        # come back in the wrong order. Refuse rather than return wrong values.
        raise UnsupportedFeatureError(file, f"tensor {fqn!r} is stored non-contiguous (stride "
                                      f"{list(tensor.stride)}) inside its DCP item; ckptkit cannot read "
                                      "its values yet")
    record = locate_record(file, info, tensor.storage.key, base=start)
    skip = tensor.storage_offset * tensor.dtype.itemsize
    return ByteRange(file, record.offset + skip, tensor.nbytes)


def _storage_index(storage_data: Any, meta_path: Path) -> dict[tuple[str, Any], Location]:
    if not isinstance(storage_data, dict):
        raise CorruptCheckpointError(meta_path, "no storage_data: the index does not say where any item is")
    out: dict[tuple[str, Any], Location] = {}
    for index, info in storage_data.items():
        i = index.fields() if isinstance(index, PickledObject) else {}
        s = info.fields() if isinstance(info, PickledObject) else {}
        offset = i.get("offset")
        key = (str(i.get("fqn")), tuple(offset) if offset is not None else None)
        out[key] = (str(s.get("relative_path")), int(s.get("offset") or 0), int(s.get("length") or 0))
    return out


def _fields_of(value: Any, kind: str, path: Path) -> dict[str, Any]:
    if not (isinstance(value, PickledObject) and value.qualified_name.endswith(f".{kind}")):
        raise CorruptCheckpointError(path, f"not a DCP {kind} pickle (found {type(value).__name__})")
    return value.fields()


def _is_tensor_meta(meta: Any) -> bool:
    return isinstance(meta, PickledObject) and meta.qualified_name.endswith("TensorStorageMetadata")


def _dtype(properties: Any, path: Path, fqn: str) -> Any:
    # TensorProperties pickles as BUILD of a tuple (dtype, layout, requires_grad, memory_format,
    # pin_memory) in current torch; older torch wrote a plain dataclass dict.
    state = properties.state if isinstance(properties, PickledObject) else None
    value = state[0] if isinstance(state, tuple) and state else (state or {}).get("dtype") if isinstance(state, dict) else None
    if not isinstance(value, TorchDtypeValue):
        raise CorruptCheckpointError(path, f"tensor {fqn!r}: no dtype in its properties")
    return dtype_named(value.name)


def _unexpected_globals(path: Path, globals_: list[GlobalRef]) -> list[Any]:
    others = [g for g in globals_ if not g.qualified_name.startswith(_EXPECTED_GLOBALS)]
    return security_findings(path, f"{path.parent.name}/{METADATA}", others)


def _insert(tree: dict[Any, Any], keys: list[Any], value: Any) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            return
    tree[keys[-1]] = value


def _lists_from_int_keys(tree: Any) -> Any:
    """planner paths index lists with ints (`optim.param_groups.0.lr`): rebuild those lists."""
    if not isinstance(tree, dict):
        return tree
    tree = {k: _lists_from_int_keys(v) for k, v in tree.items()}
    if tree and all(isinstance(k, int) for k in tree) and sorted(tree) == list(range(len(tree))):
        return [tree[i] for i in range(len(tree))]
    return tree


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _peek(file: Path, offset: int) -> bytes:
    with open(file, "rb") as f:
        f.seek(offset)
        return f.read(4)


def _member(path: Path, name: str, role: str, fmt: str) -> Any:
    from ckptkit.checkpoint import MemberFile

    size = (path / name).stat().st_size if (path / name).is_file() else 0
    return MemberFile(name, size, role, fmt if size else None)
