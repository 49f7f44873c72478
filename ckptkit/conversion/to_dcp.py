"""A single checkpoint -> a `torch.distributed.checkpoint` folder, written by torch's own DCP writer.

DCP's on-disk format (a `.metadata` pickle of its dataclasses, items appended to `.distcp`
files) is torch's to define, so torch writes it: the tree is handed to
`torch.distributed.checkpoint.save` (no process group needed), streamed. DCP plans the whole
folder from the tree's shapes and dtypes alone, so every tensor goes in as a *meta* placeholder
(no memory); `StreamingSavePlanner.resolve_data`, which the writer calls for one item at a time
just before writing it, reads that one tensor from the source (cast by --dtype, made
contiguous) into an anonymous memory map of its own, and gives that memory back when the writer
asks for the next. Memory stays at about the largest tensor, whatever the checkpoint's size.

This leans on how torch 2.13's `FileSystemWriter` writes (checked against its source):
with one thread and no copy-ahead (`thread_count=1, per_thread_copy_ahead=0`) it resolves items
lazily through `_SerialCpuLoader`, one after another, in this thread; a tensor whose storage
is exactly its own bytes is written as it is (not cloned); and every written tensor stays
referenced until its file is closed (`tensor_dict`, used only for SAFETENSORS output), which
is why the planner gives each tensor's memory back itself rather than dropping its reference.
The folder is then read back with ckptkit's DCP reader and every tensor compared with the source.
"""
from __future__ import annotations

import mmap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ckptkit.conversion.plan import map_leaves, with_whole_tensors
from ckptkit.conversion.verify import check_casts
from ckptkit.core.checkpoint import StorageRef, TensorRef, iter_tensors
from ckptkit.core.dtypes import DType
from ckptkit.core.errors import CkptkitError, CorruptCheckpointError, UnsupportedFeatureError, WriteVerificationError
from ckptkit.formats import open_checkpoint
from ckptkit.storage.safe_pickle import TorchDeviceValue, TorchDtypeValue
from ckptkit.storage.tensor_bytes import CHUNK, DerivedStorage, same_bytes, tensor_chunks
from ckptkit.views.jsonable import to_jsonable


def placeholder_state(tree: Any, where: Path) -> tuple[Any, dict[int, TensorRef]]:
    """`tree` as DCP plans it: each tensor a meta tensor of its shape and dtype, containers
    rebuilt, plain values as torch values; and {id(placeholder): the tensor it stands for}."""
    sources: dict[int, TensorRef] = {}

    def leaf(value: Any) -> Any:
        placeholder = _torch_value(value, where)
        if isinstance(value, TensorRef):
            sources[id(placeholder)] = value
        return placeholder

    return map_leaves(tree, leaf), sources


def _torch_value(leaf: Any, where: Path) -> Any:
    import torch

    if isinstance(leaf, TensorRef):
        # Contiguous, as DCP's own loaders expect items (and ckptkit's DCP reader reads them):
        # a strided tensor would be saved with its strides inside the item.
        return torch.empty(leaf.shape, dtype=getattr(torch, leaf.dtype.name), device="meta")
    if isinstance(leaf, TorchDtypeValue):
        return getattr(torch, leaf.name)
    if isinstance(leaf, TorchDeviceValue):
        return torch.device(leaf.spec)
    if leaf is None or isinstance(leaf, (bool, int, float, str, bytes)):
        return leaf
    raise UnsupportedFeatureError(where, f"a DCP folder cannot hold {leaf!r} (only tensors and plain values); "
                                  "pass --weights-only to write the model alone")


def materialised(t: TensorRef) -> tuple[Any, mmap.mmap | None]:
    """`t`'s values in a contiguous tensor, and the anonymous memory map that holds them.

    The map is exactly the tensor's bytes, so DCP's writer writes the tensor as it is (it
    clones any tensor whose storage is larger), and it is private to this tensor, so `release`
    gives its pages back to the system at once; heap memory freed here would be kept and
    fragmented by glibc (a cast's temporaries grew the process by ~half the checkpoint).
    The elements `t` spans are read as stored, a chunk at a time, into a map of their own;
    a strided or cast tensor is then copied out of it by torch (`copy_` casts as `Tensor.to`).
    """
    import torch

    dtype = getattr(torch, t.dtype.name)
    if t.numel == 0:
        return torch.empty(t.shape, dtype=dtype), None
    stored, as_stored = _stored(t)
    size, (lo, hi) = as_stored.itemsize, t.element_span()
    span = _filled_map(stored.iter_chunks(CHUNK, lo * size, (hi - lo) * size), (hi - lo) * size, t)
    elements = torch.frombuffer(span, dtype=getattr(torch, as_stored.name))
    if stored is t.storage and t.is_contiguous():
        return elements.view(t.shape), span
    buffer = _private_map(t.nbytes)
    out = torch.frombuffer(buffer, dtype=dtype).view(t.shape)
    out.copy_(torch.as_strided(elements, t.shape, t.stride, t.storage_offset - lo))
    release(span)
    return out, buffer


def _stored(t: TensorRef) -> tuple[StorageRef, DType]:
    """The storage holding `t`'s elements and their dtype there: a cast's source and the dtype
    it casts from (same element indices), else `t`'s own (a storage may be untyped bytes)."""
    if isinstance(t.storage, DerivedStorage) and t.storage.casts:
        return t.storage.source, t.storage.elements
    return t.storage, t.dtype


def _filled_map(chunks: Iterable[bytes], nbytes: int, t: TensorRef) -> mmap.mmap:
    buffer, position = _private_map(nbytes), 0
    for chunk in chunks:
        buffer[position:position + len(chunk)] = chunk
        position += len(chunk)
    if position != nbytes:
        raise CorruptCheckpointError(t.storage.byte_range().path, f"storage {t.storage.key!r}: read {position} "
                                     f"of the {nbytes} bytes tensor {t.describe()} needs")
    return buffer


def _private_map(nbytes: int) -> mmap.mmap:
    # Private: MADV_DONTNEED frees its pages. Python's default anonymous map is shared, whose
    # pages would only leave this process's resident set and stay allocated in shared memory.
    return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def release(buffer: mmap.mmap | None) -> None:
    """Give a `materialised` tensor's memory back; the tensor then reads as zeros."""
    if buffer is not None:
        buffer.madvise(mmap.MADV_DONTNEED)


def _streaming_planner(sources: dict[int, TensorRef]) -> Any:
    from torch.distributed.checkpoint import DefaultSavePlanner
    from torch.distributed.checkpoint.planner import WriteItemType

    class StreamingSavePlanner(DefaultSavePlanner):
        """DCP's default planning (flattening, metadata) over placeholders; each tensor item is
        read from the source only when the writer resolves it, and released at the next."""

        def __init__(self) -> None:
            super().__init__()
            self.handed_out: list[mmap.mmap | None] = []

        def resolve_data(self, write_item: Any) -> Any:
            # The writer has written the previous item by now (serial loader: see the docstring).
            self.release()
            value = self.lookup_object(write_item.index)
            if write_item.type != WriteItemType.BYTE_IO:
                return self.value_of(value)
            # DCP pickles a tuple whole, as one item: the tensors in it are read now, together.
            data = self.transform_object(write_item, map_leaves(value, self.value_of))
            self.release()
            return data

        def value_of(self, leaf: Any) -> Any:
            if id(leaf) not in sources:   # placeholders stay alive, so no other object has their id
                return leaf
            tensor, buffer = materialised(sources[id(leaf)])
            self.handed_out.append(buffer)
            return tensor

        def release(self) -> None:
            for buffer in self.handed_out:
                release(buffer)
            self.handed_out = []

    return StreamingSavePlanner()


def write_dcp(folder: Path, state: Any, sources: dict[int, TensorRef]) -> None:
    """A `placeholder_state` saved as a DCP folder, one tensor in memory at a time."""
    import warnings

    import torch.distributed.checkpoint as dcp

    planner = _streaming_planner(sources)
    writer = dcp.FileSystemWriter(str(folder), thread_count=1, per_thread_copy_ahead=0)
    with warnings.catch_warnings():   # "torch.distributed is disabled ... single process": just so
        warnings.simplefilter("ignore", UserWarning)
        try:
            dcp.save(state, storage_writer=writer, planner=planner, no_dist=True)
        finally:
            planner.release()


def verify_dcp(folder: Path, shown_as: Path, expected_tree: Any, uncast_tree: Any = None) -> int:
    """Every tensor of the written DCP folder against the source's, by dotted name; with
    `uncast_tree` (the tree before a --dtype cast), each cast tensor also against torch's cast
    of its source tensor (see `ckptkit.conversion.verify.verify_torch_file`)."""

    try:
        got = with_whole_tensors(open_checkpoint(folder))
    except CkptkitError as exc:
        raise WriteVerificationError(shown_as, f"written folder does not read back: {exc.message}") from None
    want_leaves, have_leaves = _leaves(to_jsonable(expected_tree)), _leaves(to_jsonable(got.tree))
    if want_leaves != have_leaves:
        odd = sorted(k for k in set(want_leaves) | set(have_leaves) if want_leaves.get(k) != have_leaves.get(k))
        raise WriteVerificationError(shown_as, f"plain values read back differ from the source's (e.g. {odd[:3]})")
    want, have = dict(iter_tensors(expected_tree)), dict(iter_tensors(got.tree))
    if set(want) != set(have):
        odd = sorted(set(want) ^ set(have))
        raise WriteVerificationError(shown_as, f"written tensor names differ from the source's (e.g. {odd[:3]})")
    for name, source in want.items():
        out = have[name]
        if (out.dtype, tuple(out.shape)) != (source.dtype, tuple(source.shape)):
            raise WriteVerificationError(shown_as, f"tensor {name!r} reads back as {out.describe()}, "
                                         f"expected {source.describe()}")
        if not same_bytes(tensor_chunks(out, None, 1 << 20), tensor_chunks(source, None, 1 << 20)):
            raise WriteVerificationError(shown_as, f"tensor {name!r}: bytes read back differ from the source's")
    if uncast_tree is not None:

        check_casts(shown_as, dict(iter_tensors(uncast_tree)), have)
    return len(want)


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    """{dotted path: leaf} of a JSON-ready tree. Empty containers have no leaves: DCP's flattening
    does not store them (an empty `lr_lambdas` list comes back absent), so they are not compared."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{path}.{k}" if path else str(k)))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(_leaves(v, f"{path}.{i}" if path else str(i)))
        return out
    return {path: value}
