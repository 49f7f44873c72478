"""Integrity without reading tensor bytes: every storage record has the size its tensors need.

The sizes come from the index (zip central directory, legacy record headers, safetensors
offsets), so these checks stay cheap; `--deep` (deep.py) then reads the bytes themselves.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ckptkit.checkpoint import Finding, Severity, StorageRef

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext


def check_integrity(ctx: ValidationContext) -> Iterable[Finding]:
    seen: set[int] = set()
    for key, tensor in ctx.ckpt.tensors():
        storage = tensor.storage
        if id(storage) not in seen:
            seen.add(id(storage))
            yield from _storage(ctx, key, storage)
        if not tensor.fits_storage():
            lo, hi = tensor.element_span()
            yield Finding("integrity.tensor-outside-storage", Severity.ERROR, ctx.where(key),
                          f"{tensor.describe()} with offset {tensor.storage_offset} and stride "
                          f"{list(tensor.stride)} needs storage elements {lo}..{hi}, but its storage holds "
                          f"{storage.numel}: torch.load would fail or read the wrong values")


def _storage(ctx: ValidationContext, key: str, storage: StorageRef) -> Iterable[Finding]:
    if storage.stored_nbytes is None:
        yield Finding("integrity.missing-record", Severity.ERROR, ctx.where(key),
                      f"expected a storage record '{storage.key}' of {storage.nbytes:,} bytes, found none in "
                      "the file: the save was interrupted or the archive was edited")
    elif storage.stored_nbytes != storage.nbytes:
        yield Finding("integrity.storage-size", Severity.ERROR, ctx.where(key),
                      f"storage '{storage.key}' should hold {storage.numel:,} x {storage.dtype.itemsize} bytes "
                      f"({storage.dtype.name}) = {storage.nbytes:,} bytes, found {storage.stored_nbytes:,}: "
                      "the record is truncated or belongs to another tensor")
