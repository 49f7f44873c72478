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

import operator
from collections import Counter
from collections.abc import Iterable
from itertools import compress
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import TYPE_CHECKING

from ckptkit.core.byte_source import FileBytes
from ckptkit.core.checkpoint import ByteRange, Finding, Severity, StorageRef, TensorRef, iter_tensor_values
from ckptkit.core.errors import CkptkitError, UnsupportedFeatureError
from ckptkit.formats.dcp import TensorInChunksError
from ckptkit.formats.torch_zip import archive_storages
from ckptkit.formats.zip_directory import ZipDirectory, is_storage_record
from ckptkit.validation.deep_records import ClaimedRecords, Record
from ckptkit.validation.zip_records import ZipMembers, ZipRecord, zip_members

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext

def check_deep(ctx: ValidationContext) -> Iterable[Finding]:
    if not ctx.deep:
        return
    records, claimed, problems = _plan(ctx)   # (the collector is paused while checks run: validate_checkpoint)
    yield from problems
    # numpy only here: commands that never read tensor bytes (inspect, ls) stay numpy-free.
    from ckptkit.validation.deep_scan import scan_records
    yield from scan_records(ctx, records, claimed)


def _plan(ctx: ValidationContext) -> tuple[list[Record], list[ClaimedRecords], list[Finding]]:
    """Every record of every file: the storages claimed column by column, and a Record for each
    other one; zip records carry their promised CRC. `deep_scan` puts them in file order."""
    problems: list[Finding] = []
    checked = _value_checked(ctx)
    archives = _Archives()
    claimed, rest = archives.claim(_record_tensors(ctx), checked)
    by_storage: dict[int, Record] = {}
    unreadable: set[int] = set()
    for key, tensor in rest:
        storage = tensor.storage
        record = by_storage.get(id(storage))
        if record is None:
            if id(storage) in unreadable:
                continue
            record = _located(ctx, key, storage, unreadable, problems)
            if record is None:
                continue
            by_storage[id(storage)] = record
        record.add(key, id(tensor) in checked)
    records = list(by_storage.values())
    located = {(r.path, r.offset): r for r in records if r.crc is None}
    for path in _zip_files(ctx, dict.fromkeys([*(block.path for block in claimed), *(r.path for r in records)])):
        members = archives.members(path)
        problems += [_zip_finding(ctx, path, text) for text in members.problems]
        if not members.crc_recorded:
            member = None if path == ctx.ckpt.path else path.name
            problems.append(Finding("deep.crc-not-recorded", Severity.INFO, ctx.where(None, member),
                                    "written without CRC-32s (torch.serialization.set_crc32_options(False)), "
                                    "which torch.load never checks: --deep read every byte and checked the "
                                    "values, but cannot tell damaged bytes from good ones"))
        elif members.skip_data:
            problems += _skip_data_findings(ctx, path, members)
        for i in archives.unclaimed(path):
            records += _attach_crc(located, members.record(i))
    return records, claimed, problems


def _skip_data_findings(ctx: ValidationContext, path: Path, members: ZipMembers) -> list[Finding]:
    """An archive torch.save wrote under `torch.serialization.skip_data()`: its storage records
    carry no CRC-32, and each holds zeros until a later pass writes its bytes. A record of only
    zeros is one that pass did not write (or a tensor that is all zeros: told apart only when
    every record is)."""
    from ckptkit.validation.deep_scan import all_zero  # numpy, as the scan itself

    member = None if path == ctx.ckpt.path else path.name
    where = ctx.where(None, member)
    stored = [i for i, name in enumerate(members.names) if is_storage_record(name) and members.sizes[i]]
    zeros = [i for i in stored
             if all_zero(ByteRange(path, members.offsets[i], members.sizes[i], members.source))]
    if zeros and len(zeros) == len(stored):
        return [Finding("deep.bytes-never-written", Severity.ERROR, where,
                        f"saved under torch.serialization.skip_data(), which leaves every tensor's bytes to a "
                        f"later pass, and that pass never ran: all {len(stored):,} storage records hold only zeros, "
                        "which torch.load returns as all-zero tensors without a word; save the checkpoint again "
                        "from the training process")]
    found = [Finding("deep.crc-not-recorded", Severity.INFO, where,
                     "saved under torch.serialization.skip_data(): its tensor bytes were written by a later pass, "
                     "without CRC-32s, which torch.load never checks: --deep read every byte and checked the "
                     "values, but cannot tell damaged bytes from good ones")]
    if zeros:
        found.append(Finding("deep.zero-records", Severity.INFO, where,
                             f"{len(zeros):,} of the {len(stored):,} storage records hold only zeros "
                             f"({_record_names(ctx, path, [members.names[i] for i in zeros])}): the skip_data "
                             "save's later pass did not write them, or these tensors are all zeros (a bias at "
                             "initialisation)"))
    return found


def _record_names(ctx: ValidationContext, path: Path, names: list[str], shown: int = 3) -> str:
    """The first few of these storage records as the user knows them: a tensor's key in a file read
    alone, the member's name in an archive of a folder."""
    keys = names[:shown]
    if path == ctx.ckpt.path:
        first: dict[str, str] = {}
        for key, tensor in ctx.tensors:
            first.setdefault(tensor.storage.key, key)
        keys = [first.get(name.rsplit("/", 1)[1], name) for name in keys]
    more = f" and {len(names) - shown:,} more" if len(names) > shown else ""
    return ", ".join(map(repr, keys)) + more


def _value_checked(ctx: ValidationContext) -> set[int]:
    """The tensors whose values are checked, by identity: model weights, optimizer state and a DCP
    folder's app state. Other tensors (a Lightning callback's best score is +inf by design) are
    CRC-checked only."""
    ckpt = ctx.ckpt
    checked = set(map(id, ckpt.model.values()))
    checked.update(map(id, iter_tensor_values(ckpt.optimizer)))
    checked.update(id(c.tensor) for chunks in ckpt.chunks.values() for c in chunks)
    return checked


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
    """Each zip file's members, read once (`zip_members`) when first needed. A storage of the
    torch zip reader that holds one tensor and lies in a member that checked out takes that
    member's range and CRC straight from here (`claim`: no local-header read per storage, and
    no Python loop doing much per tensor); every other storage is located as its reader locates
    it, and claims its member by position (`_attach_crc`)."""

    def __init__(self) -> None:
        self._members: dict[Path, ZipMembers] = {}
        self._by_name: dict[Path, dict[str, int]] = {}
        self._claimed: dict[Path, set[int]] = {}

    def members(self, path: Path, source: FileBytes | None = None, directory: object = None) -> ZipMembers:
        if path not in self._members:
            plain = directory if isinstance(directory, ZipDirectory) else None
            self._members[path] = members = (zip_members(path, source, plain) if _is_zip(path)
                                             else ZipMembers(path, source or FileBytes(path)))
            self._by_name[path] = {name: i for i, name in enumerate(members.names)}
            self._claimed[path] = set()
        return self._members[path]

    def claim(self, pairs: list[tuple[str, TensorRef]],
              checked: set[int]) -> tuple[list[ClaimedRecords], list[tuple[str, TensorRef]]]:
        """The tensors whose storage (theirs alone) lies in a member that checked out all at once,
        as records made column by column; and the (key, tensor) pairs left for the loop."""
        storages = list(map(attrgetter("storage"), map(itemgetter(1), pairs)))
        counts = Counter(map(id, storages))
        shared = {sid for sid, n in counts.items() if n > 1} if len(counts) < len(storages) else set()
        blocks: list[ClaimedRecords] = []
        taken = bytearray(len(pairs))
        for group in archive_storages(storages):
            members = self.members(group.path, group.source, group.directory)
            by_name, plain, offsets, sizes = self._by_name[group.path], members.plain, members.offsets, members.sizes
            # A storage found already (its `step` read by the counters check) is claimed only at
            # the range it was found at.
            picked = [(p, i, name) for p, i, name, at in zip(group.positions, map(by_name.get, group.names),
                                                              group.names, group.found, strict=True)
                      if i is not None and i < plain and (not shared or id(storages[p]) not in shared)
                      and (at is None or (at.offset == offsets[i] and at.length == sizes[i]))]
            if not picked:
                continue
            positions, found, names = (list(column) for column in zip(*picked, strict=True))
            self._claimed[group.path].update(found)
            for p in positions:
                taken[p] = 1
            mine = list(map(pairs.__getitem__, positions))     # (key, tensor) of each
            block = ClaimedRecords(group.path, members.source)
            block.offsets, block.lengths = list(map(offsets.__getitem__, found)), list(map(sizes.__getitem__, found))
            block.crcs, block.members = list(map(members.crcs.__getitem__, found)), names
            block.storages, block.keys = list(map(storages.__getitem__, positions)), list(map(itemgetter(0), mine))
            block.checked = list(map(checked.__contains__, map(id, map(itemgetter(1), mine))))
            blocks.append(block)
        claimed = sum(map(len, blocks))
        rest = pairs if not claimed else [] if claimed == len(pairs) else list(
            compress(pairs, map(operator.not_, taken)))
        return blocks, rest

    def unclaimed(self, path: Path) -> list[int]:
        claimed = self._claimed[path]
        return [i for i in range(len(self._members[path].names)) if i not in claimed]


def _record_tensors(ctx: ValidationContext) -> list[tuple[str, TensorRef]]:
    """Every tensor with bytes of its own: the tree's, and each chunk of a chunked (DCP) tensor."""
    chunks = [(f"{fqn}[chunk at {list(chunk.offsets)}]", chunk.tensor)
              for fqn, chunked in ctx.ckpt.chunks.items() for chunk in chunked if chunk.tensor is not None]
    return [*ctx.tensors, *chunks] if chunks else ctx.tensors


def _attach_crc(located: dict[tuple[Path, int], Record], z: ZipRecord) -> list[Record]:
    """Give a storage record its member's CRC; members that are no storage become records."""
    record = located.get((z.where.path, z.where.offset))
    if record is not None and record.length == z.where.length:
        record.member, record.crc = z.member, z.crc
        return []
    return [Record.at(z.where, member=z.member, crc=z.crc)]


def _zip_files(ctx: ValidationContext, record_paths: Iterable[Path]) -> list[Path]:
    paths = dict.fromkeys([*ctx.ckpt.files, *record_paths])
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
