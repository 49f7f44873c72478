"""Integrity without reading tensor bytes: every storage record has the size its tensors need.

The sizes come from the index (zip central directory, legacy record headers, safetensors
offsets), so these checks stay cheap; `--deep` (deep.py) then reads the bytes themselves.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ckptkit.core.checkpoint import Finding, Severity, StorageRef, contiguous_stride
from ckptkit.core.errors import CkptkitError, UnsupportedFeatureError

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext

MAX_JSON_BYTES = 64 << 20


def check_integrity(ctx: ValidationContext) -> Iterable[Finding]:
    yield from _folder_json(ctx)
    if ctx.ckpt.details.skip_data and not ctx.deep:     # --deep says whether the bytes were written
        yield Finding("integrity.skip-data", Severity.INFO, ctx.where(None),
                      "saved under torch.serialization.skip_data(): torch.save left every tensor's bytes to a "
                      "later pass to write (zeros until then), without CRC-32s; `ckptkit validate --deep` reads "
                      "them and says whether that pass ran")
    seen: set[StorageRef] = set()      # by identity (a StorageRef has no __eq__): one check per record
    # shape -> its contiguous stride and element count: one entry per distinct shape, so the
    # common case (offset 0, contiguous, one storage each) costs no loop per tensor.
    contiguous: dict[tuple[int, ...], tuple[tuple[int, ...], int]] = {}
    # The tensors without their key paths: a path is made only for a finding (`ctx.tensors[i]`).
    for i, tensor in enumerate(ctx.tensor_values):
        storage = tensor.storage
        if storage not in seen:
            seen.add(storage)
            if storage.stored_nbytes is None or storage.stored_nbytes != storage.numel * storage.dtype.itemsize:
                yield from _storage(ctx, ctx.tensors[i][0], storage)
        if tensor.storage_offset == 0 and tensor.dtype is storage.dtype:
            known = contiguous.get(tensor.shape)
            if known is None:
                known = contiguous[tensor.shape] = (contiguous_stride(tensor.shape), tensor.numel)
            if tensor.stride == known[0] and known[1] <= storage.numel:
                continue
        if not tensor.fits_storage():
            lo, hi = tensor.element_span()
            yield Finding("integrity.tensor-outside-storage", Severity.ERROR, ctx.where(ctx.tensors[i][0]),
                          f"{tensor.describe()} with offset {tensor.storage_offset} and stride "
                          f"{list(tensor.stride)} needs storage elements {lo}..{hi}, but its storage holds "
                          f"{storage.numel}: torch.load would fail or read the wrong values")


def _storage(ctx: ValidationContext, key: str, storage: StorageRef) -> Iterable[Finding]:
    size = storage.stored_nbytes
    if size is None:
        # Unknown from the index (a missing zip member, or a DCP chunk): ask where the bytes are.
        try:
            size = storage.byte_range().length
        except UnsupportedFeatureError:      # a tensor kept in chunks: each chunk is its own record
            return
        except CkptkitError as exc:
            yield Finding("integrity.missing-record", Severity.ERROR, ctx.where(key),
                          f"expected a storage record '{storage.key}' of {storage.nbytes:,} bytes, found none: "
                          f"{exc.message}")
            return
    if size != storage.nbytes:
        yield Finding("integrity.storage-size", Severity.ERROR, ctx.where(key),
                      f"storage '{storage.key}' should hold {storage.numel:,} x {storage.dtype.itemsize} bytes "
                      f"({storage.dtype.name}) = {storage.nbytes:,} bytes, found {size:,}: "
                      "the record is truncated or belongs to another tensor")


def _folder_json(ctx: ValidationContext) -> Iterable[Finding]:
    """JSON members a folder reader had no reason to read (config.json beside Trainer state...) must
    still parse: transformers reads them when the model is rebuilt for the resume."""
    folder = ctx.ckpt.path
    if not folder.is_dir():
        return
    read = set(ctx.ckpt.tree) if isinstance(ctx.ckpt.tree, dict) else set()
    for path in sorted(folder.glob("*.json")):
        if path.name in read or not path.is_file() or path.stat().st_size > MAX_JSON_BYTES:
            continue
        try:
            json.loads(path.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            yield Finding("integrity.damaged-json", Severity.ERROR, ctx.where(None, path.name),
                          f"expected a JSON document, found damaged bytes ({exc}): the file was cut short "
                          "or corrupted; restore it from the run's base model or an earlier checkpoint")
