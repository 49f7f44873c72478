"""A single checkpoint -> a `torch.distributed.checkpoint` folder, written by torch's own DCP writer.

DCP's on-disk format (a `.metadata` pickle of its dataclasses, items appended to `.distcp`
files) is torch's to define, so torch writes it: the tree is handed to
`torch.distributed.checkpoint.save` (no process group needed) with tensors that are views of
the source file's memory map, so no tensor is copied into this process before DCP writes it.
The folder is then read back with ckptkit's DCP reader and every tensor compared with the source.
"""
from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

from ckptkit.checkpoint import TensorRef, iter_tensors
from ckptkit.conversion.plan import map_leaves
from ckptkit.errors import CkptkitError, UnsupportedFeatureError, WriteVerificationError
from ckptkit.jsonable import to_jsonable
from ckptkit.safe_pickle import TorchDeviceValue, TorchDtypeValue
from ckptkit.tensor_bytes import on_disk, same_bytes, tensor_chunks


def torch_values(tree: Any, where: Path) -> Any:
    """`tree` as live torch values: tensors mapped from the file, containers rebuilt."""
    return map_leaves(tree, lambda leaf: _torch_value(leaf, where))


def _torch_value(leaf: Any, where: Path) -> Any:
    import torch

    if isinstance(leaf, TensorRef):
        # Contiguous, as DCP's own loaders expect items (and ckptkit's DCP reader reads them):
        # a strided view would be saved with its strides inside the item.
        return _mapped_tensor(leaf) if leaf.is_contiguous() else _mapped_tensor(leaf).contiguous()
    if isinstance(leaf, TorchDtypeValue):
        return getattr(torch, leaf.name)
    if isinstance(leaf, TorchDeviceValue):
        return torch.device(leaf.spec)
    if leaf is None or isinstance(leaf, (bool, int, float, str, bytes)):
        return leaf
    raise UnsupportedFeatureError(where, f"a DCP folder cannot hold {leaf!r} (only tensors and plain values); "
                                  "pass --weights-only to write the model alone")


def _mapped_tensor(t: TensorRef) -> Any:
    import torch

    dtype = getattr(torch, t.dtype.name)
    if t.numel == 0:
        return torch.empty(t.shape, dtype=dtype)
    lo, hi = t.element_span()
    where = t.storage.byte_range()
    start = where.offset + lo * t.dtype.itemsize
    aligned = start - start % mmap.ALLOCATIONGRANULARITY
    if not on_disk(t.storage) or (start - aligned) % t.dtype.itemsize:
        return t.to_torch()   # produced bytes, or a record not aligned to its elements (legacy files)
    with open(where.path, "rb") as f:
        # A private (copy-on-write) map: torch.frombuffer wants a writable buffer; nothing is written.
        mm = mmap.mmap(f.fileno(), start - aligned + (hi - lo) * t.dtype.itemsize, flags=mmap.MAP_PRIVATE,
                       offset=aligned)
    flat = torch.frombuffer(mm, dtype=torch.uint8).view(dtype)
    # as_strided counts its offset from the start of the storage, i.e. of the mapping
    first = (start - aligned) // t.dtype.itemsize
    return torch.as_strided(flat, t.shape, t.stride, first + t.storage_offset - lo)


def write_dcp(folder: Path, state: Any) -> None:
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():   # "torch.distributed is disabled ... single process": just so
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(folder)), no_dist=True)


def verify_dcp(folder: Path, shown_as: Path, expected_tree: Any) -> int:
    """Every tensor of the written DCP folder against the source's, by dotted name."""
    from ckptkit.conversion.plan import with_whole_tensors
    from ckptkit.formats import open_checkpoint

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
