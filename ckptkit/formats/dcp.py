"""`torch.distributed.checkpoint` folders: `.metadata` + `__{rank}_{i}.distcp`.

`.metadata` is a plain pickle of DCP's dataclasses (torch/distributed/checkpoint/metadata.py),
read here with the restricted unpickler: they become inert stubs whose fields are mapped below.
`state_dict_metadata` gives every tensor's global shape, dtype and chunks; `storage_data` says
where each chunk (and each non-tensor "bytes" item) lies: a file, an offset and a length.
With DCP's default serialization each item is a complete torch.save archive, concatenated into
the `.distcp` file. Non-tensor items (optimizer hyper-parameters, counters) are small and read
to build the state tree; tensor chunks are only located, never read, until someone asks. A
tensor item keeps the strides it was saved with (a transposed weight, a sharded view), which
only its own pickle says: that pickle is read, by the torch-zip reader, when a chunk's layout or
bytes are first asked for (`ItemTensor`).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ckptkit.core.byte_source import FileBytes
from ckptkit.core.checkpoint import (
    ByteRange,
    Checkpoint,
    MemberFile,
    Severity,
    StorageRef,
    TensorChunk,
    TensorRef,
    make_tensor,
)
from ckptkit.core.dtypes import DType, dtype_named
from ckptkit.core.errors import CkptkitError, CorruptCheckpointError, MissingFileError, UnsupportedFeatureError
from ckptkit.formats.base import checkpoint_from_tree, security_findings, unpickle_or_raise
from ckptkit.formats.folder import FolderReading, take_training_state
from ckptkit.formats.safetensors_file import read_safetensors_header
from ckptkit.formats.torch_zip import ZIP_MAGIC, read_zip_pickle
from ckptkit.storage.safe_pickle import GlobalRef, PickledObject, TorchDtypeValue, safe_loads


class TensorInChunksError(UnsupportedFeatureError):
    """A tensor saved in several chunks has no single byte range; read `Checkpoint.chunks` instead."""

METADATA = ".metadata"
# ckptkit's sharded (FSDP) checkpoints keep everything but the shards in this member, written by
# rank 0 beside DCP's files (`ckptkit.training.sharded`): counters, scheduler, RNG, data position.
CKPTKIT_TRAINING_STATE = "ckptkit_training_state.pt"
# Lightning's sharded checkpoints (a `*.ckpt` folder: FSDPStrategy(state_dict_type="sharded"),
# ModelParallelStrategy, Fabric's FSDP and model-parallel saves) put the modules and optimizers
# through DCP and everything else, torch.save'd by rank 0, in this member (`_METADATA_FILENAME`).
LIGHTNING_META = "meta.pt"
# The names DCP's own metadata pickle refers to; only these are expected there.
_EXPECTED_GLOBALS = ("torch.distributed.checkpoint.", "torch.serialization._get_layout",
                     "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePosixPath")
# file, offset, length, and the stream transforms (DCP extensions: zstd...) the item went through
Location = tuple[str, int, int, tuple[str, ...]]


def unfinished_save(path: Path) -> str | None:
    """Why a folder of DCP data files without `.metadata` is no checkpoint: DCP's coordinator
    writes `.metadata` last, after every rank's `.distcp` files, so the save did not finish."""
    try:
        if (path / METADATA).exists() or not any(p.suffix == ".distcp" for p in path.iterdir()):
            return None
    except OSError:
        return None
    return ("DCP data files without .metadata: the save did not finish (torch.distributed.checkpoint writes "
            ".metadata last, after every rank's data); resume from an earlier checkpoint")


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
        state = None
        if (path / CKPTKIT_TRAINING_STATE).is_file():
            state = reading.open_member(CKPTKIT_TRAINING_STATE, "ckptkit training state (counters, scheduler, "
                                        "RNG, data position)")
        elif (path / LIGHTNING_META).is_file():
            meta = reading.open_member(LIGHTNING_META, "Lightning checkpoint state (counters, loops, callbacks, "
                                       "hyper-parameters)")
            if meta is not None and isinstance(meta.tree, dict):
                tree = lightning_checkpoint(meta.tree, tree)
        elif _lightning_without_meta(path, tree):
            reading.add_finding("folder.missing-member", Severity.ERROR, LIGHTNING_META,
                                "a Lightning sharded checkpoint (DCP's model and optimizer_N, as FSDPStrategy and "
                                f"ModelParallelStrategy save them) without its {LIGHTNING_META}, which rank 0 writes "
                                "after the shards: the save stopped before it, or the file was not copied. Lightning "
                                "refuses the folder ('does not point to a valid checkpoint'), and the epoch, step, "
                                "loops, LR schedulers and callbacks it held are lost; resume from an earlier "
                                "checkpoint")
        ckpt = checkpoint_from_tree(path, self.name, tree, [])
        if state is not None and isinstance(state.tree, dict):
            ckpt.tree = {**{k: v for k, v in state.tree.items() if k not in tree}, **tree}
            take_training_state(ckpt, state, CKPTKIT_TRAINING_STATE)
        done = reading.finish(self.name, ckpt.family, ckpt.progress)
        ckpt.size_bytes, ckpt.files, ckpt.members = done.size_bytes, done.files, done.members
        ckpt.chunks = layout.chunks
        ckpt.findings = _unexpected_globals(meta_path, result.globals) + reading.findings + ckpt.findings
        ckpt.details.dcp_version, ckpt.details.dcp_tensors = str(fields.get("version")), len(layout.chunks)
        storage_meta = fields.get("storage_meta")
        if isinstance(storage_meta, PickledObject) and storage_meta.fields().get("save_id"):
            ckpt.details.dcp_save_id = str(storage_meta.fields()["save_id"])
        return ckpt


def _lightning_without_meta(path: Path, tree: dict[str, Any]) -> bool:
    """What the Lightning Trainer's sharded save put through DCP, `{"model": ..., "optimizer_0": ...}`
    (`FSDPStrategy.save_checkpoint`), with no meta.pt beside it: told by those keys, or by a `.ckpt`
    name when only the model is there (save_weights_only; accelerate's FSDP model folder is also
    `{"model"}` alone, but named pytorch_model_fsdp_N)."""
    optimizers = {f"optimizer_{i}" for i in range(len(tree) - 1)}
    return "model" in tree and set(tree) - {"model"} == optimizers and (bool(optimizers) or path.suffix == ".ckpt")


def lightning_checkpoint(meta: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint a Lightning sharded folder loads back as: `meta.pt`'s dict joined by what
    DCP holds. A Trainer's (`pytorch-lightning_version` in meta.pt) is the .ckpt dict it was cut
    from: FSDPStrategy saves its `state_dict` as DCP's `model` (ModelParallelStrategy keeps
    `state_dict`) and each of `optimizer_states` as `optimizer_{i}`, and its load puts them back.
    Fabric saves the user's own keys, modules and optimizers in DCP and the rest in meta.pt."""
    if "pytorch-lightning_version" not in meta:
        return {**meta, **tensors}
    rest = dict(tensors)
    rebuilt = dict(meta)
    model = rest.pop("state_dict") if "state_dict" in rest else rest.pop("model", None)
    if model is not None:
        rebuilt["state_dict"] = model
    optimizers: list[Any] = []
    while f"optimizer_{len(optimizers)}" in rest:
        optimizers.append(rest.pop(f"optimizer_{len(optimizers)}"))
    if optimizers:
        rebuilt["optimizer_states"] = optimizers
    return {**rebuilt, **rest}


class DcpLayout:
    """Turns DCP's flat {fqn: storage metadata} into a nested state tree with lazy tensors."""

    def __init__(self, path: Path, reading: FolderReading, locations: dict[tuple[str, Any], Location]) -> None:
        self.path, self.reading, self.locations = path, reading, locations
        self.chunks: dict[str, list[TensorChunk]] = {}
        self._missing_files: set[str] = set()
        self._sizes: dict[str, int | None] = {}
        self._sources: dict[Path, FileBytes] = {}   # one map per .distcp file, for all its items

    def build_tree(self, state_meta: Any, planner: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(state_meta, dict):
            raise CorruptCheckpointError(self.path / METADATA, "no state_dict_metadata: not a DCP checkpoint index")
        tree: dict[str, Any] = {}
        for fqn, meta in state_meta.items():
            fqn = str(fqn)
            value = self._tensor(fqn, meta) if _is_tensor_meta(meta) else self._value(fqn)
            keys = planner.get(fqn)
            _insert(tree, list(keys) if isinstance(keys, (tuple, list)) and keys else [fqn], value)
        # The top level stays a dict (the caller merges it with the training state) even when a
        # damaged planner gives it only int keys; below it, int-keyed levels become lists.
        return {k: _lists_from_int_keys(v) for k, v in tree.items()}

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
            key = f"{fqn}@{list(offsets)}"
            tensor = ItemTensor.deferred(dtype, sizes, functools.partial(self._stored, fqn, key, dtype, sizes, loc))
            chunks.append(TensorChunk(offsets, sizes, loc[0], loc[1], loc[2], tensor))
        self.chunks[fqn] = chunks
        return chunked_tensor(self.path, fqn, dtype, shape, chunks)

    def _stored(self, fqn: str, key: str, dtype: DType, sizes: tuple[int, ...], loc: Location) -> TensorRef:
        """The chunk as its item stores it. An item that cannot be read leaves a chunk whose bytes
        cannot be found, said when they are asked for (validation reports it then)."""
        try:
            file = self.path / loc[0]
            source = self._sources.setdefault(file, FileBytes(file))
            return stored_chunk(file, loc, fqn, key, dtype, sizes, source)
        except CkptkitError as exc:
            error = exc

        def fail() -> ByteRange:
            raise error
        return make_tensor(dtype.name, sizes, StorageRef(key, dtype, _numel(sizes), "cpu", locate=fail))

    def _value(self, fqn: str) -> Any:
        loc = self.locations.get((fqn, None))
        if loc is None or not self._check_file(loc, fqn):
            return None
        file = self.path / loc[0]
        try:
            _refuse_transformed(file, loc, fqn)
            result, _ = read_zip_pickle(file, (loc[1], loc[2]))
        except Exception as exc:   # whatever fails while decoding the item, its bytes are not what DCP writes
            # the reader's own message: for a pickle that stops early it names the calls it saw first
            why = exc.message if isinstance(exc, CkptkitError) else type(exc).__name__
            self.reading.add_finding("dcp.unreadable-item", Severity.ERROR, loc[0],
                                     f"item {fqn!r} at bytes {loc[1]}..{loc[1] + loc[2]} cannot be read ({why})")
            return None
        # (no weights-only findings: DCP loads such items with torch.load(weights_only=False))
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


def chunked_tensor(path: Path, fqn: str, dtype: DType, shape: tuple[int, ...], chunks: list[TensorChunk]) -> TensorRef:
    """The tensor `fqn` of global `shape` saved as `chunks`: the one chunk's own tensor when it is
    the whole; otherwise a tensor whose bytes are found only chunk by chunk (`Checkpoint.chunks`;
    `convert` assembles them)."""
    if len(chunks) == 1 and chunks[0].sizes == shape and chunks[0].tensor is not None:
        return chunks[0].tensor
    count = len(chunks)

    def split() -> ByteRange:
        raise TensorInChunksError(path, f"tensor {fqn!r} is stored in {count} chunks; read them "
                                  "one by one (Checkpoint.chunks) or assemble them first")
    return make_tensor(dtype.name, shape, StorageRef(fqn, dtype, _numel(shape), "cpu", locate=split))


class _FromItem:
    """An ItemTensor field that only the item's own pickle knows: read on first use, then kept."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, tensor: Any, owner: type | None = None) -> Any:
        if tensor is None:
            return self
        if self.name not in tensor.__dict__:
            tensor.read_item()
        return tensor.__dict__[self.name]

    def __set__(self, tensor: Any, value: Any) -> None:
        tensor.__dict__[self.name] = value


class ItemTensor(TensorRef):
    """A DCP chunk. Its dtype and shape are in `.metadata`; its stride, storage offset and storage
    only in its item's pickle (DCP torch.save's each tensor as it is: a transposed weight keeps
    its strides), which is read the first time one of them is asked for, so that opening a
    folder reads `.metadata` alone. Otherwise a plain TensorRef (dataclasses.replace works)."""

    _read: Callable[[], TensorRef]   # set by deferred(), consumed by read_item()
    stride = _FromItem()
    storage = _FromItem()
    storage_offset = _FromItem()

    @classmethod
    def deferred(cls, dtype: DType, shape: tuple[int, ...], read: Callable[[], TensorRef]) -> ItemTensor:
        tensor = cls.__new__(cls)
        tensor.dtype, tensor.shape, tensor._read = dtype, shape, read
        # TensorRef has slots: fields with defaults have no class-level value to fall back on.
        tensor.requires_grad, tensor.is_parameter, tensor.subclass, tensor.global_shape = False, False, None, None
        return tensor

    def read_item(self) -> None:
        stored = self.__dict__.pop("_read")()
        self.stride, self.storage, self.storage_offset = stored.stride, stored.storage, stored.storage_offset


def stored_chunk(file: Path, loc: Location, fqn: str, key: str, dtype: DType, sizes: tuple[int, ...],
                 source: FileBytes | None = None) -> TensorRef:
    """A chunk's tensor as its item in `file` stores it: strides and storage offset as saved
    (read by the torch-zip reader, the item being a torch.save archive), the storage renamed
    `key` because every item calls its own "0" and conversions write storages by name.

    With `serialization_format=SAFETENSORS` DCP writes no archives: every tensor of a .distcp
    file is in one safetensors file appended to it, and each tensor's storage entry gives that
    file's start (the same for all) and the tensor's byte count, not where the tensor lies."""
    start, length = loc[1], loc[2]
    _refuse_transformed(file, loc, fqn)
    try:
        if _peek(file, start) == ZIP_MAGIC:
            tensor = read_zip_pickle(file, (start, length), source)[0].value
        else:   # SAFETENSORS serialization: one safetensors file per .distcp, its tensors named by fqn
            tensor = read_safetensors_header(file, start)[0].get(fqn)
    except OSError as exc:
        raise MissingFileError(file, f"tensor {fqn!r}: cannot read its item ({exc.strerror})") from None
    except Exception as exc:   # whatever fails while decoding the item (zipfile raises many kinds), it is damaged
        why = exc.message if isinstance(exc, CkptkitError) else type(exc).__name__
        raise CorruptCheckpointError(file, f"tensor {fqn!r}: stored item at byte {start} is damaged ({why})") from None
    if not isinstance(tensor, TensorRef) or tensor.dtype != dtype or tensor.shape != sizes:
        found = tensor.describe() if isinstance(tensor, TensorRef) else type(tensor).__name__
        raise CorruptCheckpointError(file, f"tensor {fqn!r}: the item at byte {start} holds {found}, the "
                                     f"metadata says {dtype.name}[{', '.join(map(str, sizes))}]")
    s = tensor.storage
    storage = StorageRef(key, s.dtype, s.numel, s.location, locate=s.byte_range, stored_nbytes=s.stored_nbytes)
    return TensorRef(dtype, sizes, tensor.stride, storage, tensor.storage_offset)


def _refuse_transformed(file: Path, loc: Location, fqn: str) -> None:
    if loc[3]:
        raise UnsupportedFeatureError(file, f"item {fqn!r} was saved through DCP stream extensions "
                                      f"{list(loc[3])} (compressed); ckptkit reads untransformed items only")


def _storage_index(storage_data: Any, meta_path: Path) -> dict[tuple[str, Any], Location]:
    if not isinstance(storage_data, dict):
        raise CorruptCheckpointError(meta_path, "no storage_data: the index does not say where any item is")
    out: dict[tuple[str, Any], Location] = {}
    for index, info in storage_data.items():
        i = index.fields() if isinstance(index, PickledObject) else {}
        s = info.fields() if isinstance(info, PickledObject) else {}
        offset = i.get("offset")
        key = (str(i.get("fqn")), tuple(offset) if offset is not None else None)
        transforms = tuple(str(t) for t in s.get("transform_descriptors") or ())
        out[key] = (str(s.get("relative_path")), int(s.get("offset") or 0), int(s.get("length") or 0), transforms)
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
    value: Any = None
    if isinstance(state, tuple) and state:
        value = state[0]
    elif isinstance(state, dict):
        value = state.get("dtype")
    if not isinstance(value, TorchDtypeValue):
        raise CorruptCheckpointError(path, f"tensor {fqn!r}: no dtype in its properties")
    return dtype_named(value.name)


def _unexpected_globals(path: Path, globals_: list[GlobalRef]) -> list[Any]:
    # DCP's own classes are expected; a call judged dangerous never is (torch_save_to_dcp is a DCP name).
    others = [g for g in globals_ if g.kind == "dangerous" or not g.qualified_name.startswith(_EXPECTED_GLOBALS)]
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

    size = (path / name).stat().st_size if (path / name).is_file() else 0
    return MemberFile(name, size, role, fmt if size else None)
