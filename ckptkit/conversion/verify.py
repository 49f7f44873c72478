"""Read a conversion's output back with ckptkit's own readers and compare it with what was meant.

Runs on the temporary file or folder, before it is renamed into place; any difference raises
WriteVerificationError, so the atomic write deletes the output and the target is untouched.
Bytes are compared stream against stream, one chunk at a time: the expected bytes are
re-derived from the source (cast again where a cast was asked), never kept from the write;
and a cast tensor is also compared with torch's cast of its source tensor's own elements, so
a cast that misread the source cannot pass by agreeing with itself.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import StorageRef, TensorRef, iter_tensors
from ckptkit.core.dtypes import DType
from ckptkit.core.errors import CkptkitError, WriteVerificationError
from ckptkit.formats import open_checkpoint
from ckptkit.formats.safetensors_file import read_safetensors_header
from ckptkit.storage.tensor_bytes import on_disk, same_bytes, same_ranges, tensor_chunks, tensor_range
from ckptkit.views.jsonable import to_jsonable

# Small chunks compare faster: each pair is compared while it is still in the CPU cache.
COMPARE_CHUNK = 1 << 20


def verify_safetensors(path: Path, shown_as: Path, tensors: Mapping[str, TensorRef],
                       metadata: Mapping[str, str], casts: Mapping[str, DType]) -> int:
    """Every tensor of a written safetensors file against its source; returns the count checked."""

    try:
        written, written_meta = read_safetensors_header(path)
    except CkptkitError as exc:
        raise WriteVerificationError(shown_as, f"written file does not read back: {exc.message}") from None
    if list(written) != list(tensors):
        missing = sorted(set(tensors) - set(written)) or sorted(set(written) - set(tensors))
        raise WriteVerificationError(shown_as, f"written tensor names differ from the source's (e.g. {missing[:3]})")
    if dict(written_meta) != {str(k): str(v) for k, v in metadata.items()}:
        raise WriteVerificationError(shown_as, "written __metadata__ differs from what was meant")
    for name, source in tensors.items():
        out = written[name]
        want = casts.get(name, source.dtype)
        if out.dtype != want or tuple(out.shape) != tuple(source.shape):
            raise WriteVerificationError(shown_as, f"tensor {name!r} reads back as {out.describe()}, "
                                         f"expected {want.name}[{', '.join(map(str, source.shape))}]")
        if not _same_tensor(out, source, casts.get(name)):
            raise WriteVerificationError(shown_as, f"tensor {name!r}: bytes read back differ from the source's")
    return len(tensors)


def verify_torch_file(path: Path, shown_as: Path, expected_tree: Any, uncast_tree: Any = None) -> int:
    """A written torch.save file against the tree meant: same structure, same tensor layouts,
    same storage sharing, and every storage record byte-identical. Returns tensors checked.

    `uncast_tree`: the tree before a --dtype cast. Each cast tensor is then also compared with
    its source tensor cast by torch, element by element as the source tensor reads them: the
    storage records above were produced by the same cast they are compared with, so a cast
    that read the source wrong (float8 bytes as uint8 numbers) would otherwise pass."""

    try:
        got = open_checkpoint(path)
    except CkptkitError as exc:
        raise WriteVerificationError(shown_as, f"written file does not read back: {exc.message}") from None
    if to_jsonable(got.tree) != to_jsonable(expected_tree):
        raise WriteVerificationError(shown_as, "the written pickle's structure differs from the source's")
    want, have = list(iter_tensors(expected_tree)), list(iter_tensors(got.tree))
    if [n for n, _ in want] != [n for n, _ in have]:
        raise WriteVerificationError(shown_as, "written tensor names differ from the source's")
    pairs: dict[str, tuple[StorageRef, StorageRef]] = {}
    for (name, a), (_, b) in zip(want, have, strict=True):   # same names, checked above
        if (a.dtype, a.shape, a.stride, a.storage_offset, a.storage.key, a.is_parameter, a.requires_grad) != (
                b.dtype, b.shape, b.stride, b.storage_offset, b.storage.key, b.is_parameter, b.requires_grad):
            raise WriteVerificationError(shown_as, f"tensor {name!r} reads back with a different layout "
                                         f"({b.describe()} at storage {b.storage.key!r}, expected {a.describe()} "
                                         f"at {a.storage.key!r})")
        if pairs.setdefault(a.storage.key, (a.storage, b.storage))[1] is not b.storage:
            raise WriteVerificationError(shown_as, f"tensor {name!r}: storage sharing was not kept")
    for key, (a_storage, b_storage) in pairs.items():
        if a_storage.nbytes != b_storage.byte_range().length or not _same_storage(a_storage, b_storage):
            raise WriteVerificationError(shown_as, f"storage record {key!r}: bytes read back differ from the source's")
    if uncast_tree is not None:
        check_casts(shown_as, dict(iter_tensors(uncast_tree)), dict(have))
    return len(want)


def check_casts(shown_as: Path, sources: Mapping[str, TensorRef], written: Mapping[str, TensorRef]) -> None:
    """Every written tensor whose dtype differs from its source's holds torch's cast of the
    source tensor's own elements (by name; a name missing on either side is a difference)."""
    if set(sources) != set(written):
        raise WriteVerificationError(shown_as, "written tensor names differ from the source's")
    for name, source in sources.items():
        out = written[name]
        if out.dtype != source.dtype and not same_bytes(tensor_chunks(out, None, COMPARE_CHUNK),
                                                        tensor_chunks(source, out.dtype, COMPARE_CHUNK)):
            raise WriteVerificationError(shown_as, f"tensor {name!r}: values read back differ from the source's "
                                         f"{source.dtype.name} values cast to {out.dtype.name} by torch")


def _same_tensor(written: TensorRef, source: TensorRef, cast: DType | None) -> bool:
    here, there = tensor_range(written), tensor_range(source) if cast is None else None
    if here is not None and there is not None:
        return same_ranges(here, there, COMPARE_CHUNK)
    return same_bytes(tensor_chunks(written, None, COMPARE_CHUNK), tensor_chunks(source, cast, COMPARE_CHUNK))


def _same_storage(expected: StorageRef, written: StorageRef) -> bool:
    if on_disk(expected):
        return same_ranges(expected.byte_range(), written.byte_range(), COMPARE_CHUNK)
    return same_bytes(expected.iter_chunks(COMPARE_CHUNK), written.iter_chunks(COMPARE_CHUNK))


def verify_index(path: Path, shown_as: Path, expected: Mapping[str, Any]) -> None:
    try:
        written = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WriteVerificationError(shown_as, f"index does not read back: {exc}") from None
    # Compared as canonical JSON text: NaN (a diverged loss in trainer_state.json) equals itself there.
    if json.dumps(written, sort_keys=True) != json.dumps(expected, sort_keys=True):
        raise WriteVerificationError(shown_as, "the written JSON differs from what was meant")
