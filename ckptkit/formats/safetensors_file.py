"""`.safetensors` files: 8-byte header length, JSON header, then the tensors' bytes.

Parsed here directly (the header is plain JSON), so reading needs neither torch nor the
safetensors package. Every tensor gets its own storage record (safetensors has no sharing).
Written here too, streaming: the header first (offsets follow from the tensors' sizes), then
each tensor's bytes, one tensor in memory at a time at most.
"""
from __future__ import annotations

import json
import math
import shlex
import struct
from array import array
from collections.abc import Mapping
from itertools import chain, repeat
from operator import attrgetter, itemgetter, mul, sub
from pathlib import Path
from typing import Any, BinaryIO

from ckptkit.core.byte_source import FileBytes
from ckptkit.core.checkpoint import ByteRange, Checkpoint, StorageRef, TensorRef, contiguous_stride, make_tensor
from ckptkit.core.dtypes import BY_SAFETENSORS, DType
from ckptkit.core.errors import CorruptCheckpointError, UnsupportedFeatureError
from ckptkit.formats.base import checkpoint_from_tree
from ckptkit.storage.tensor_bytes import write_tensor

MAX_HEADER = 100 * 1024 * 1024   # safetensors' own limit
# The codes whose shape is torch's (F4's last dimension counts 4-bit values: read entry by entry).
_UNPACKED = {code: dtype for code, dtype in BY_SAFETENSORS.items() if dtype.packed == 1}
# The __metadata__ key in which torch.distributed.checkpoint's Hugging Face storage records where a
# rank's tensors start in the whole ones (read by ckptkit.formats.dcp_safetensors; checked here so
# that an ordinary file's readers never import that module).
DCP_SHARDING_KEY = "DCP_SHARDING_INFO"        # torch/distributed/checkpoint/_hf_utils.py: CUSTOM_METADATA_KEY

# safetensors codes with no torch dtype: valid files whose tensors torch cannot load.
_NO_TORCH_DTYPE = {"F6_E2M3": "6-bit float (MX format)", "F6_E3M2": "6-bit float (MX format)"}


def may_be_dcp_rank_file(fmt: str, metadata: Mapping[str, str]) -> bool:
    """Whether a checkpoint of format `fmt` may be one rank's part of a DCP Hugging Face save: the
    cheap test that decides whether ckptkit.formats.dcp_safetensors needs importing at all."""
    return fmt == "safetensors" and DCP_SHARDING_KEY in metadata


class SafetensorsFormat:
    name = "safetensors"
    description = "safetensors file (.safetensors; format of huggingface/safetensors)"

    def sniff(self, path: Path, head: bytes) -> bool:
        if len(head) < 9:
            return False
        n = struct.unpack("<Q", head[:8])[0]
        return 2 <= n <= MAX_HEADER and head[8:9] == b"{"

    def read(self, path: Path) -> Checkpoint:
        tensors, metadata = read_safetensors_header(path)
        ckpt = checkpoint_from_tree(path, self.name, tensors, [])
        ckpt.metadata.update(metadata)
        return ckpt


def read_safetensors_header(path: Path, base: int = 0) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors (lazy) and __metadata__ of the safetensors file `path`, or of the one that
    starts at byte `base` of it (DCP's SAFETENSORS serialization appends one to a .distcp file)."""
    raw, data_start, size = _header_bytes(path, base)
    header, metadata = _parsed_header(path, raw)
    _check_metadata(path, metadata)
    source = FileBytes(path)    # the file's map, made when a tensor's bytes are first read
    # The data section ends with the file, except for a DCP item (another item follows it).
    data_len = size - data_start if base == 0 else None
    try:
        return _checked_in_bulk(header, data_start, size, path, source, data_len), metadata
    except (_Damaged, KeyError, TypeError, ValueError, AttributeError):
        pass    # some entry is damaged: the entry-by-entry reading below names it
    return entry_tensors(path, header, data_start, size, source, data_len), metadata


def entry_tensors(path: Path, header: dict[str, Any], data_start: int, size: int, source: FileBytes | None = None,
                  data_len: int | None = None) -> dict[str, Any]:
    """The tensors of `header` checked entry by entry (`header_tensor` names the first damaged
    one), then their layout as safetensors checks it: what `_checked_in_bulk` checks in columns."""
    tensors = {name: header_tensor(path, name, info, data_start, size, source) for name, info in header.items()}
    ranges = [t.storage.byte_range() for t in tensors.values()]
    problem = _layout_problem(list(tensors), [r.offset - data_start for r in ranges],
                              [r.offset - data_start + r.length for r in ranges], data_len)
    if problem:
        raise CorruptCheckpointError(path, problem + _salvage_hint(path))
    return tensors


def _salvage_hint(path: Path) -> str:
    """The tensors of a file safetensors refuses for its layout or metadata are all there."""
    out = path.with_name(f"{path.stem}.fixed.safetensors")
    return f"; `ckptkit salvage {shlex.quote(str(path))} {shlex.quote(str(out))}` writes them into a file it loads"


def _check_metadata(path: Path, metadata: dict[str, Any]) -> None:
    """safetensors reads __metadata__ as a map of strings and refuses the whole file otherwise."""
    bad = next((k for k, v in metadata.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise CorruptCheckpointError(path, f"safetensors __metadata__ holds {bad!r} = {str(metadata[bad])[:40]}, "
                                     f"not a string: safetensors refuses the whole file ('invalid type ... "
                                     f"expected a string'){_salvage_hint(path)}")


def _layout_problem(names: list[str], begins: list[int], ends: list[int], data_len: int | None) -> str | None:
    """What safetensors' own header check (`Metadata::validate`) refuses in the tensors' layout:
    sorted by offsets they must follow each other from byte 0 with no gap or overlap, and the
    last must end where the file does. None when it accepts them. Two sorts of plain ints and a
    comparison in C: a shard of 10,000 tensors is checked in about a millisecond."""
    starts, stops = sorted(begins), sorted(ends)
    end = data_len if data_len is not None else (stops[-1] if stops else 0)
    lengths_positive = all(map(int.__lt__, begins, ends))
    if lengths_positive and (not starts or (starts[0] == 0 and stops[-1] == end and starts[1:] == stops[:-1])):
        if starts or not end:
            return None
    order = sorted(range(len(begins)), key=lambda i: (begins[i], ends[i]))     # as safetensors walks them
    at = 0
    for i in order:
        if begins[i] != at:
            how = "a gap" if begins[i] > at else "an overlap"
            return (f"tensor {names[i]!r} starts at byte {begins[i]} of the data, but the tensors before it end at "
                    f"byte {at}: {how}, which safetensors refuses ('invalid offset'), and so the whole file")
        at = ends[i]
    if at != end:
        return (f"the tensors end at byte {at} of the data, but the file holds {end} data bytes: safetensors refuses "
                f"bytes no tensor covers ('file not fully covered'), and so the whole file")
    return None


class _Damaged(Exception):
    """Some header entry fails a bulk check (which one: `header_tensor` says)."""


def _checked_in_bulk(header: dict[str, Any], data_start: int, size: int, path: Path,
                     source: FileBytes | None, data_len: int | None = None) -> dict[str, TensorRef]:
    """The checks of `header_tensor` on every entry at once, column by column in C-level passes
    (map, set, min), then the tensors built the same way: a shard folder of 100,000 tensors
    spent more time here entry by entry than parsing the JSON. Accepts only what
    `header_tensor` accepts; anything else raises, and the caller reads entry by entry."""
    infos = header.values()       # itemgetter of a str key raises for every JSON value but a dict
    dtypes = list(map(_UNPACKED.__getitem__, map(itemgetter("dtype"), infos)))
    offsets = list(map(itemgetter("data_offsets"), infos))
    if set(map(len, offsets)) - {2}:
        raise _Damaged
    dims = list(map(tuple, map(itemgetter("shape"), infos)))     # as header_tensor's list(): any iterable
    begins, ends = list(map(itemgetter(0), offsets)), list(map(itemgetter(1), offsets))
    # Exact ints (json's true is not 1, nor 2.0 a dimension), without a list of them all: the
    # shapes below are then told apart by value, one check, numel and stride per distinct shape.
    if set(map(type, chain(chain.from_iterable(dims), begins, ends))) - {int}:
        raise _Damaged
    # Every entry of one shape shares one tuple: a model has a few hundred distinct shapes, not
    # 100,000 (the entry's own tuple is freed). Ints only by now, so equal shapes are the same.
    shape_of = dict(zip(dims, dims, strict=True))
    dims = list(map(shape_of.__getitem__, dims))
    shapes = shape_of.keys()
    if min(chain.from_iterable(shapes), default=0) < 0 or (begins and min(begins) < 0):
        raise _Damaged
    numel_of = {shape: math.prod(shape) for shape in shapes}
    numels = list(map(numel_of.__getitem__, dims))
    nbytes = list(map(mul, numels, map(attrgetter("itemsize"), dtypes)))
    if list(map(sub, ends, begins)) != nbytes or (ends and data_start + max(ends) > size):
        raise _Damaged
    problem = _layout_problem(list(header), begins, ends, data_len)
    if problem:
        raise CorruptCheckpointError(path, problem + _salvage_hint(path))
    # The objects are made by C-level loops (map) calling their constructors, with one stride per
    # distinct shape, and one locator for the file that makes a tensor's byte range when first
    # asked for (most commands never read a tensor's bytes).
    strides = {shape: contiguous_stride(shape) for shape in shapes}
    n = len(dims)
    locate = _HeaderLocator(path, data_start, list(header), begins, ends, source)
    storages = map(StorageRef, header, dtypes, numels, repeat("cpu", n), repeat(None, n), nbytes, repeat(None, n),
                   repeat(locate, n))
    return dict(zip(header, map(TensorRef, dtypes, dims, map(strides.__getitem__, dims), storages), strict=True))


class _HeaderLocator:
    """Where each tensor of one safetensors file lies: one locator for the whole file
    (`StorageRef`'s `locate_key`), not a closure per tensor. It keeps the offsets as two arrays of
    machine integers (16 bytes a tensor) beside the names in header order; the name -> position
    map is made when a tensor's bytes are first asked for (most commands never ask). Offsets
    kept as Python ints took 130 bytes a tensor, and the header's own bytes 95: memory that
    every command paid for, and time (a page first touched costs a fault)."""

    __slots__ = ("path", "data_start", "source", "names", "begins", "ends", "_position")

    def __init__(self, path: Path, data_start: int, names: list[str], begins: list[int], ends: list[int],
                 source: FileBytes | None) -> None:
        self.path, self.data_start, self.source, self.names = path, data_start, source, names
        self.begins, self.ends = array("q", begins), array("q", ends)
        self._position: dict[str, int] | None = None

    def __call__(self, key: str) -> ByteRange:
        if self._position is None:
            self._position = dict(zip(self.names, range(len(self.names)), strict=True))
        i = self._position[key]
        begin = self.begins[i]
        return ByteRange(self.path, self.data_start + begin, self.ends[i] - begin, self.source)


def read_header_entries(path: Path, base: int = 0) -> tuple[dict[str, Any], dict[str, str], int, int]:
    """(raw header entries, __metadata__, where the data starts, file size): the header alone,
    so that `ckptkit salvage` can take the tensors of a truncated file one by one."""
    raw, data_start, size = _header_bytes(path, base)
    header, metadata = _parsed_header(path, raw)
    return header, {str(k): str(v) for k, v in metadata.items()}, data_start, size


def _header_bytes(path: Path, base: int) -> tuple[bytes, int, int]:
    """The JSON header's bytes, where the data starts, and the file's size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(base)
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        # a damaged length is checked before reading: f.read(2**60) would try to allocate it first
        raw = f.read(n) if base + 8 + n <= size else b""
    if len(head) < 8 or base + 8 + n > size or len(raw) < n:
        raise CorruptCheckpointError(path, f"safetensors header says {n} bytes but the file has "
                                     f"{max(0, size - base - 8)} after the length: truncated")
    return raw, base + 8 + n, size


def _parsed_header(path: Path, raw: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header's entries and its __metadata__."""
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpointError(path, f"safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(path, "safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CorruptCheckpointError(path, "safetensors __metadata__ is not a JSON object")
    return header, metadata


def header_tensor(path: Path, name: str, info: Any, data_start: int, size: int,
                  source: FileBytes | None = None) -> Any:
    """One header entry as a lazy tensor, its bytes checked to lie inside the file (`source`:
    the file's shared map; None maps it when the bytes are first read)."""
    try:
        code, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
    except (KeyError, TypeError, ValueError):
        code, shape, begin, end = None, [], -1, -1
    dtype = BY_SAFETENSORS.get(code) if isinstance(code, str) else None
    if dtype is None and isinstance(code, str) and code in _NO_TORCH_DTYPE:
        raise UnsupportedFeatureError(path, f"tensor {name!r} is {code}, a {_NO_TORCH_DTYPE[code]} torch has "
                                      f"no dtype for: torch cannot load it")
    if dtype is None and isinstance(code, str) and set(map(type, [*shape, begin, end])) <= {int}:
        raise CorruptCheckpointError(path, f"tensor {name!r}: dtype {code[:20]!r} is not a safetensors dtype "
                                     f"(safetensors refuses the whole file)")
    if dtype is not None and dtype.packed != 1 and shape and type(shape[-1]) is int:
        if shape[-1] % dtype.packed:
            raise UnsupportedFeatureError(path, f"tensor {name!r} is {code} {shape}: torch holds {dtype.packed} "
                                          f"of its values per {dtype.name} element, so the last dimension must be "
                                          f"a multiple of {dtype.packed}")
        shape[-1] //= dtype.packed      # torch's shape: F4 [4, 8] is float4_e2m1fn_x2 [4, 4]
    elif dtype is not None and dtype.packed != 1:
        dtype = None        # a 0-d F4 is not a whole byte
    counts = [*shape, begin, end]
    # C-level checks (100,000 tensors in a shard folder): ints (json's bools are not), none negative.
    if dtype is None or not set(map(type, counts)) <= {int} or min(counts) < 0:
        raise CorruptCheckpointError(path, f"tensor {name!r}: header entry is damaged ({str(info)[:80]})")
    numel = 1
    for d in shape:
        numel *= d
    if end - begin != numel * dtype.itemsize or begin > end:
        raise CorruptCheckpointError(path, f"tensor {name!r}: {dtype.name}{shape} needs {numel * dtype.itemsize} "
                                     f"bytes but its offsets span {end - begin}")
    if data_start + end > size:
        raise CorruptCheckpointError(path, f"tensor {name!r} ends at byte {data_start + end} but the file has "
                                     f"{size}: truncated")
    storage = StorageRef(name, dtype, numel, "cpu", where=ByteRange(path, data_start + begin, end - begin, source),
                         stored_nbytes=end - begin)
    return make_tensor(dtype, tuple(shape), storage)


def write_safetensors(out: BinaryIO, tensors: Mapping[str, TensorRef], metadata: Mapping[str, str] | None = None,
                      dtypes: Mapping[str, DType] | None = None) -> int:
    """Write `tensors` (in their order) as a safetensors file to `out`; returns the bytes written.

    `dtypes` casts the named tensors (torch's rounding). Views and non-contiguous tensors are
    written contiguous; tensors that share a storage are each written in full (safetensors has
    no sharing: the caller decides which names to leave out as aliases).
    """

    dtypes = dtypes or {}
    header, end = safetensors_header(tensors, metadata, dtypes)
    out.write(header)
    for name, t in tensors.items():
        write_tensor(out, t, dtypes.get(name))
    return len(header) + end


def safetensors_header(tensors: Mapping[str, TensorRef], metadata: Mapping[str, str] | None,
                       dtypes: Mapping[str, DType]) -> tuple[bytes, int]:
    """The 8-byte length plus the JSON header (space-padded to 8 bytes, as safetensors does),
    and the length of the data section that follows."""
    entries: dict[str, Any] = {}
    if metadata:
        entries["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, t in tensors.items():
        dtype = dtypes.get(name, t.dtype)
        if dtype.safetensors is None:
            raise UnsupportedFeatureError(None, f"tensor {name!r} is {dtype.name}, which safetensors cannot hold")
        nbytes = t.numel * dtype.itemsize
        shape = list(t.shape)
        if dtype.packed != 1:      # float4_e2m1fn_x2 [4, 4] is F4 [4, 8]
            if not shape:
                raise UnsupportedFeatureError(None, f"tensor {name!r} is a 0-d {dtype.name}, which has no "
                                              f"{dtype.safetensors} shape in safetensors")
            shape[-1] *= dtype.packed
        entries[name] = {"dtype": dtype.safetensors, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    if len(raw) > MAX_HEADER:
        raise UnsupportedFeatureError(None, f"safetensors header would be {len(raw)} bytes, over the "
                                      f"{MAX_HEADER}-byte limit of the format")
    return struct.pack("<Q", len(raw)) + raw, offset
