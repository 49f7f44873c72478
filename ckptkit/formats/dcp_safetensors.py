"""torch.distributed.checkpoint's Hugging Face storage: the `*.safetensors` files each rank writes
with `HuggingFaceStorageWriter(save_distributed=True)` (torchtitan's Hugging Face-format saves).

Each file is plain safetensors. Its `__metadata__` holds `DCP_VERSION` and, in
`DCP_SHARDING_INFO` (a JSON string), where each of its tensors starts in the whole tensor:
`{"0.weight": {"saved_offsets": [4, 0]}, ...}`. A rank's file is named
`shard-{rank + 1:05d}-model-{i:05d}-of-{n:05d}.safetensors`, and no index is written: as DCP's
own `HuggingFaceStorageReader.read_metadata` does, every `*.safetensors` file of the folder is
read, and a tensor's global shape is the furthest extent of its chunks (offset + size, per
dimension). A missing rank file leaves a gap in its tensors, which is said; one that held the
last rows leaves none, since nothing on disk records the global shape. `enable_consolidation=True`
also writes the whole tensors as plain shards with an index (read as `safetensors-shards`), and a
save from one process (`save_distributed=False`) writes whole tensors at offset 0.
"""
from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Checkpoint, Finding, MemberFile, Progress, Severity, TensorChunk, TensorRef
from ckptkit.core.dtypes import DType
from ckptkit.core.errors import CkptkitError, CorruptCheckpointError
from ckptkit.formats.base import checkpoint_from_tree
from ckptkit.formats.dcp import chunked_tensor
from ckptkit.formats.folder import FolderReading, member_names
from ckptkit.formats.safetensors_file import DCP_SHARDING_KEY as SHARDING_KEY
from ckptkit.formats.safetensors_file import may_be_dcp_rank_file, read_header_entries, read_safetensors_header

OFFSETS_KEY = "saved_offsets"
RANK_FILE = re.compile(r"shard-(\d+)-model-\d+-of-\d+\.safetensors")
ROLE = "DCP data (one rank's tensors)"


def saved_offsets(path: Path, metadata: dict[str, str], tensors: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Where each of `tensors` starts in its whole tensor, as the file's DCP_SHARDING_INFO says
    (all at 0 without one, as DCP reads it). A tensor it leaves out, or gives offsets of the wrong
    length, makes DCP's reader fail: an error naming the file."""
    raw = metadata.get(SHARDING_KEY)
    if raw is None:
        return {key: (0,) * len(t.shape) for key, t in tensors.items()}
    try:
        info = json.loads(raw)
        offsets = {key: tuple(info[key][OFFSETS_KEY]) for key in tensors}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        why = f"{type(exc).__name__}: {str(exc)[:80]}"
        raise CorruptCheckpointError(path, f"its {SHARDING_KEY} metadata cannot be read ({why}): "
                                     "torch.distributed.checkpoint cannot place its tensors") from None
    for key, at in offsets.items():
        shape = tensors[key].shape
        if len(at) != len(shape) or not all(type(o) is int and o >= 0 for o in at):
            raise CorruptCheckpointError(path, f"its {SHARDING_KEY} places tensor {key!r} ({len(shape)} dimensions) "
                                         f"at {list(at)}: torch.distributed.checkpoint cannot place it")
    return offsets


def rank_part(path: Path, metadata: dict[str, str], tensors: dict[str, Any]) -> str | None:
    """Why the safetensors file `path` is one rank's part of a DCP Hugging Face save (its tensors
    are slices), or None: a tensor starts past 0, or its name says a rank and the folder holds
    other ranks' files. A one-rank save, or a save from one process, holds whole tensors."""
    if SHARDING_KEY not in metadata:
        return None
    try:
        offsets = saved_offsets(path, metadata, tensors)
    except CkptkitError:
        return None       # DCP's own reader fails on it; read alone, safetensors loads it as it is
    sliced = [(key, at) for key, at in offsets.items() if any(at)]
    others = sorted(n for n in member_names(path.parent) if RANK_FILE.fullmatch(n) and n != path.name)
    if not sliced and not (RANK_FILE.fullmatch(path.name) and others):
        return None
    where = (f"{len(sliced)} of its {len(offsets)} tensors start past offset 0 (e.g. {sliced[0][0]!r} at "
             f"{list(sliced[0][1])})" if sliced else "its tensors start at offset 0, as rank 0's do")
    return (f"one rank's part of a torch.distributed.checkpoint Hugging Face save (HuggingFaceStorageWriter: "
            f"{SHARDING_KEY} in its metadata): {where}, and its folder holds {len(others)} other rank "
            f"file{'s' if len(others) != 1 else ''}. Read "
            "alone (safetensors' load_file), its tensors are slices that load_state_dict refuses")


RANK_FILE_CODE = "compat.dcp-rank-file"


def rank_file_findings(ckpt: Checkpoint, where: str) -> list[Finding]:
    """A single safetensors file that is one rank's part of a DCP Hugging Face save: the warning
    `validate` and `inspect` both give, with the command that assembles its folder."""
    if not may_be_dcp_rank_file(ckpt.format, ckpt.metadata):
        return []
    why = rank_part(ckpt.path, ckpt.metadata, ckpt.model or dict(ckpt.tensors()))
    if why is None:
        return []
    return [Finding(RANK_FILE_CODE, Severity.WARNING, where, why, f"{convert_folder_command(ckpt.path)} (the whole "
                    "tensors, assembled from every rank file of the folder)")]


class DcpSafetensorsFormat:
    name = "dcp-safetensors"
    description = ("torch.distributed.checkpoint Hugging Face storage (a folder of shard-*.safetensors files "
                   f"with {SHARDING_KEY}, as HuggingFaceStorageWriter writes them)")

    def sniff(self, path: Path, head: bytes) -> bool:
        files = sorted(n for n in member_names(path) if n.endswith(".safetensors"))
        if not files:
            return False
        try:
            _, metadata, _, _ = read_header_entries(path / files[0])
        except (CkptkitError, OSError):
            return False
        return SHARDING_KEY in metadata

    def read(self, path: Path) -> Checkpoint:
        reading = FolderReading(path)
        chunks: dict[str, list[TensorChunk]] = {}
        dtypes: dict[str, DType] = {}
        for name in sorted(n for n in member_names(path) if n.endswith(".safetensors")):
            size = (path / name).stat().st_size
            try:
                tensors, metadata = read_safetensors_header(path / name)
                offsets = saved_offsets(path / name, metadata, tensors)
                _agree(path / name, tensors, dtypes)
            except CkptkitError as exc:
                reading.members[name] = MemberFile(name, size, ROLE, None)
                reading.add_finding("folder.unreadable-member", Severity.ERROR, name,
                                    f"{ROLE} file cannot be read: {exc.message}")
                continue
            reading.members[name] = MemberFile(name, size, ROLE, "safetensors")
            for key, tensor in tensors.items():
                where = tensor.storage.byte_range()
                dtypes.setdefault(key, tensor.dtype)
                chunks.setdefault(key, []).append(
                    TensorChunk(offsets[key], tensor.shape, name, where.offset, where.length, tensor))
        tree: dict[str, TensorRef] = {}
        for fqn, pieces in chunks.items():
            ends = [[o + s for o, s in zip(c.offsets, c.sizes, strict=True)] for c in pieces]
            shape = tuple(map(max, zip(*ends, strict=True)))      # the furthest chunk, per dimension
            held, whole = sum(math.prod(c.sizes) for c in pieces), math.prod(shape)
            if held != whole:
                reading.add_finding("dcp.missing-chunk", Severity.ERROR, "",
                                    f"tensor {fqn!r}: its chunks hold {held:,} elements, but reach "
                                    f"as far as {list(shape)} ({whole:,} elements): a rank's file is missing, or "
                                    "two hold the same part")
            tree[fqn] = chunked_tensor(path, fqn, dtypes[fqn], shape, pieces)
        if not tree and not reading.findings:
            reading.add_finding("folder.missing-weights", Severity.ERROR, "", "no tensors in its safetensors files")
        ckpt = checkpoint_from_tree(path, self.name, tree, [])
        ckpt.sources["model"] = f"chunks of {sum(m.format is not None for m in reading.members.values())} rank files"
        ckpt.progress = Progress(notes=["weights only: DCP's Hugging Face storage keeps no training progress"])
        done = reading.finish(self.name, ckpt.family, ckpt.progress)
        ckpt.size_bytes, ckpt.files, ckpt.members = done.size_bytes, done.files, done.members
        ckpt.chunks = chunks
        ckpt.findings = reading.findings + ckpt.findings
        return ckpt


def _agree(path: Path, tensors: dict[str, TensorRef], dtypes: dict[str, DType]) -> None:
    """Every rank saves a tensor's chunks in one dtype; DCP's reader takes the first file's."""
    for key, tensor in tensors.items():
        first = dtypes.get(key)
        if first is not None and tensor.dtype is not first:
            raise CorruptCheckpointError(path, f"holds tensor {key!r} as {tensor.dtype.name}, another rank's "
                                         f"file as {first.name}: the chunks of one tensor cannot be joined")


def convert_folder_command(path: Path) -> str:
    """The command that assembles a rank file's folder into one file of whole tensors."""
    folder = path.parent
    if folder.name in ("", ".."):       # the file named from inside its folder: write beside the folder
        target = folder / ".." / f"{folder.resolve().name}.safetensors"
    else:
        target = folder.parent / f"{folder.name}.safetensors"
    return f"ckptkit convert {shlex.quote(str(folder))} {shlex.quote(str(target))}"
