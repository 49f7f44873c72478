"""`--deep`: read every byte of tensor data once and check what the bytes say.

Every record (a torch storage, a safetensors tensor, a zip member) is planned here, in file
order, and scanned by `deep_scan` (many small records per numpy pass, memory-mapped and released
a window at a time, so peak memory stays a few windows whatever the file size). For each
record: the zip CRC-32 against the central directory (torch zips carry one per member, so a
single flipped bit anywhere in tensor data is always caught), and for floating storages NaN/Inf
counts and, for Adam's `exp_avg_sq`, negative values. safetensors and legacy files carry no
checksum: there only values that are impossible can be caught. Each zip member's local header
is compared with its central-directory entry (`zip_records`, all members at once for torch's
plain archives), and a storage the torch zip reader has not located yet takes its byte range
from that same pass.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ckptkit.core.byte_source import FileBytes
from ckptkit.core.checkpoint import Finding, Severity, StorageRef, TensorRef, iter_tensors
from ckptkit.core.errors import CkptkitError, UnsupportedFeatureError
from ckptkit.formats.dcp import TensorInChunksError
from ckptkit.formats.files import cyclic_gc_paused
from ckptkit.formats.torch_zip import storage_member
from ckptkit.formats.zip_directory import ZipDirectory
from ckptkit.validation.deep_records import Record
from ckptkit.validation.zip_records import ZipMembers, ZipRecord, zip_members

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext

def check_deep(ctx: ValidationContext) -> Iterable[Finding]:
    if not ctx.deep:
        return
    with cyclic_gc_paused():      # 80,000 records, all kept: the collector would only re-scan them
        records, problems = _plan(ctx)
    yield from problems
    # numpy only here: commands that never read tensor bytes (inspect, ls) stay numpy-free.
    from ckptkit.validation.deep_scan import scan_records
    yield from scan_records(ctx, records)


def _plan(ctx: ValidationContext) -> tuple[list[Record], list[Finding]]:
    """Every record of every file, in file order; zip records carry their promised CRC."""
    by_storage: dict[int, Record] = {}
    problems: list[Finding] = []
    # Other tensors (a Lightning callback's best score is +inf by design) are CRC-checked only.
    checked = ({id(t) for t in ctx.ckpt.model.values()} | {id(t) for _, t in iter_tensors(ctx.ckpt.optimizer)}
               | {id(c.tensor) for chunks in ctx.ckpt.chunks.values() for c in chunks})   # DCP: app state
    unreadable: set[int] = set()
    archives = _Archives()
    for key, tensor in _record_tensors(ctx):
        record = by_storage.get(id(tensor.storage))
        if record is None:
            if id(tensor.storage) in unreadable:
                continue
            record = archives.record(tensor.storage) or _located(ctx, key, tensor.storage, unreadable, problems)
            if record is None:
                continue
            by_storage[id(tensor.storage)] = record
        record.tensors.append(key)
        if not record.values_checked and id(tensor) in checked:
            record.values_checked = True
    records = list(by_storage.values())
    located = {(r.path, r.offset): r for r in records if r.crc is None}
    for path in _zip_files(ctx, records):
        members = archives.members(path)
        problems += [_zip_finding(ctx, path, text) for text in members.problems]
        for i in archives.unclaimed(path):
            records += _attach_crc(located, members.record(i))
    records.sort(key=lambda r: (str(r.path), r.offset))
    return records, problems


def _located(ctx: ValidationContext, key: str, storage: StorageRef, unreadable: set[int],
             problems: list[Finding]) -> Record | None:
    """A record for `storage` from its own byte range; None (and a finding) when that cannot be had."""
    try:
        return Record.at(storage.byte_range(), storage)
    except TensorInChunksError:          # a DCP tensor kept in chunks: _record_tensors lists them
        return None
    except UnsupportedFeatureError as exc:
        unreadable.add(id(storage))
        problems.append(Finding("integrity.unreadable-values", Severity.WARNING, ctx.where(key),
                                f"--deep could not read this tensor's bytes, so its values were not "
                                f"checked: {exc.message}"))
        return None
    except CkptkitError as exc:
        problems.append(Finding("integrity.missing-record", Severity.ERROR, ctx.where(key),
                                f"the bytes of this tensor cannot be found: {exc.message}"))
        return None


class _Archives:
    """Each zip file's members, read once (`zip_members`) when first needed. A storage that the
    torch zip reader has not located yet and whose member checked out takes that member's range
    and CRC straight from here (no local-header read per storage); every other storage is
    located as its reader locates it, and claims its member by position (`_attach_crc`)."""

    def __init__(self) -> None:
        self._members: dict[Path, ZipMembers] = {}
        self._by_name: dict[Path, dict[str, int]] = {}
        self._claimed: dict[Path, set[int]] = {}
        self._last: Path | None = None
        self._last_members = ZipMembers(Path(), FileBytes(Path()))
        self._last_names: dict[str, int] = {}
        self._last_claimed: set[int] = set()

    def members(self, path: Path, source: FileBytes | None = None, directory: object = None) -> ZipMembers:
        if path not in self._members:
            plain = directory if isinstance(directory, ZipDirectory) else None
            self._members[path] = members = (zip_members(path, source, plain) if _is_zip(path)
                                             else ZipMembers(path, source or FileBytes(path)))
            self._by_name[path] = {name: i for i, name in enumerate(members.names)}
            self._claimed[path] = set()
        return self._members[path]

    def record(self, storage: StorageRef) -> Record | None:
        hint = storage_member(storage)
        if hint is None:
            return None
        path, name, source, directory = hint
        if path is not self._last:         # one archive's storages come in a row: skip hashing its path
            self._last, self._last_members = path, self.members(path, source, directory)
            self._last_names, self._last_claimed = self._by_name[path], self._claimed[path]
        members = self._last_members
        i = self._last_names.get(name)
        if i is None or i >= members.plain:      # only a member that checked out all at once
            return None
        self._last_claimed.add(i)
        return Record(path, members.offsets[i], members.sizes[i], members.source, storage, name, members.crcs[i])

    def unclaimed(self, path: Path) -> list[int]:
        claimed = self._claimed[path]
        return [i for i in range(len(self._members[path].names)) if i not in claimed]


def _record_tensors(ctx: ValidationContext) -> Iterator[tuple[str, TensorRef]]:
    """Every tensor with bytes of its own: the tree's, and each chunk of a chunked (DCP) tensor."""
    yield from ctx.ckpt.tensors()
    for fqn, chunks in ctx.ckpt.chunks.items():
        for chunk in chunks:
            if chunk.tensor is not None:
                yield f"{fqn}[chunk at {list(chunk.offsets)}]", chunk.tensor


def _attach_crc(located: dict[tuple[Path, int], Record], z: ZipRecord) -> list[Record]:
    """Give a storage record its member's CRC; members that are no storage become records."""
    record = located.get((z.where.path, z.where.offset))
    if record is not None and record.length == z.where.length:
        record.member, record.crc = z.member, z.crc
        return []
    return [Record.at(z.where, member=z.member, crc=z.crc)]


def _zip_files(ctx: ValidationContext, records: list[Record]) -> list[Path]:
    paths = dict.fromkeys([*ctx.ckpt.files, *(r.path for r in records)])
    return [Path(path) for path in paths if _is_zip(path)]


def _is_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _zip_finding(ctx: ValidationContext, path: Path, text: str) -> Finding:
    member = None if path == ctx.ckpt.path else path.name
    return Finding("deep.zip-header-mismatch", Severity.ERROR, ctx.where(None, member), text)
