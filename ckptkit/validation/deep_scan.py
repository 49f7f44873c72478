"""`--deep`'s pass over the bytes: many small records checked together, one window at a time.

A checkpoint of 80,000 small storages spent ~30 us a record in Python (a map slice, a CRC call,
two numpy reductions, findings) whatever its size. Here each file's records are columns (offset,
length, promised CRC, the dtype its values are checked as), sorted by offset, whether they came
as Records or as a claimed block (`ClaimedRecords`, whose Records are made only when needed),
and taken a window of at most
WINDOW_BYTES of the file at a time: every record's CRC-32 is computed over the window's one
map, and each dtype's values are reduced per record in one numpy call (`minimum.reduceat` /
`maximum.reduceat` over the window read as that dtype, one segment per record). A record that
could hold a finding (a CRC that differs, a minimum or maximum that is not finite, a negative
minimum where values must be >= 0, a bool byte above 1, a float8 NaN pattern) is then scanned
again on its own by `_scan_record`, exactly as every record used to be: the findings, their
counts and their words come from that one place, so batching can make nothing more or less
suspicious than it is. Records larger than a window, or whose bytes reach the end of the file,
are streamed on their own. Each window's pages are released once it is done (`FileBytes.release`
unmaps them a batch of RELEASE_BATCH_BYTES at a time), so memory stays at about two windows (plus
a window of float32 when bf16/fp16 values are widened).
"""
from __future__ import annotations

import zlib
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate, chain, repeat
from operator import attrgetter, methodcaller
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ckptkit.core.byte_source import FileBytes
from ckptkit.core.checkpoint import ByteRange, Finding, Severity, mapped_bytes, release_mapped_pages
from ckptkit.core.dtypes import DType
from ckptkit.core.errors import CkptkitError
from ckptkit.validation.deep_records import NON_NEGATIVE_SUFFIXES, ClaimedRecords, Record
from ckptkit.validation.value_scan import ValueStats, scan_chunk

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext

CHUNK_BYTES = 8 << 20
WINDOW_BYTES = 8 << 20
_SLACK = 8     # bytes past a window's last record that stay readable: one element of any dtype
_FLOATS = {"float64": "<f8", "float32": "<f4", "float16": "<f2", "bfloat16": "<u2"}


def scan_records(ctx: ValidationContext, records: list[Record],
                 claimed: Sequence[ClaimedRecords] = ()) -> Iterator[Finding]:
    """The findings of every record, in file order (file name, then offset), as `_scan_record`
    words them; `claimed`: records made column by column, scanned alike."""
    files = _files(records, claimed)
    total = sum(f.total for f in files)
    done = 0
    for f in files:
        for i, j in f.pieces():
            if f.alone[i]:
                record = f.record(i)
                yield from _scan_record(ctx, record, done, total)
                release_mapped_pages(record.where)
            else:
                yield from _scan_window(ctx, f, i, j, done, total)
            done += f.bytes_in(i, j)
            if ctx.progress_callback is not None:
                ctx.progress_callback(done, total)
    if ctx.progress_callback is not None:
        ctx.progress_callback(total, total)


class _FileRecords:
    """One file's records as columns in offset order (a stable sort: Records first, then the
    claimed blocks), each record's Record made only when it is read on its own."""

    def __init__(self, path: Path, records: list[Record], blocks: list[ClaimedRecords], fallback: FileBytes) -> None:
        self.path, self._records, self._blocks = path, records, blocks
        self._block_starts = list(accumulate([len(records), *map(len, blocks)]))[:-1]
        for r in records:
            if r.source is None:      # a range mapped when read: one map per file, not one per record
                r.source = fallback
        sources = [*map(attrgetter("source"), records), *chain.from_iterable(repeat(b.source, len(b)) for b in blocks)]
        offsets = self._column(map(attrgetter("offset"), records), [b.offsets for b in blocks])
        order = np.argsort(offsets, kind="stable")
        self._order = order.tolist()
        self.offsets = offsets[order]
        self.lengths = self._column(map(attrgetter("length"), records), [b.lengths for b in blocks])[order]
        self.crcs = self._column((-1 if r.crc is None else r.crc for r in records), [b.crcs for b in blocks])[order]
        self.non_negative = np.fromiter(chain(map(attrgetter("non_negative"), records), *(
            map(methodcaller("endswith", NON_NEGATIVE_SUFFIXES), b.keys) for b in blocks)), bool, len(order))[order]
        self.kinds, self.kind_dtypes = self._kinds(records, blocks, order)
        self.sources = list(dict.fromkeys(sources))       # FileBytes hash by identity: each map once
        source_codes = {id(source): code for code, source in enumerate(self.sources)}
        self.source_code = np.fromiter(map(source_codes.__getitem__, map(id, sources)), np.int64, len(order))[order]
        sizes = np.array([_map_size(source) for source in self.sources], np.int64)
        self.ends = self.offsets + self.lengths
        self.alone = (self.lengths > WINDOW_BYTES) | (self.offsets < 0) | (self.ends + _SLACK > sizes[self.source_code])
        self.total = int(self.lengths.sum())
        self._bytes_before = np.concatenate([[0], np.cumsum(self.lengths)])

    @staticmethod
    def _column(first: Iterable[int], rest: list[list[int]]) -> np.ndarray:
        return np.fromiter(chain(first, *rest), np.int64)

    @staticmethod
    def _kinds(records: list[Record], blocks: list[ClaimedRecords],
               order: np.ndarray) -> tuple[np.ndarray, list[DType]]:
        """Per record, the dtype its values are checked as (an index into the list), or -1.
        Told apart by name: a str hashes in C, a DType (a frozen dataclass) in Python."""
        storages = [r.storage if r.values_checked else None for r in records]
        for b in blocks:
            storages += [storage if checked else None for storage, checked in zip(b.storages, b.checked, strict=True)]
        names = [None if s is None else s.dtype.name for s in storages]
        known = {name: s.dtype for name, s in zip(names, storages, strict=True) if s is not None}
        codes: dict[str | None, int] = {name: code for code, name in enumerate(known)}
        codes[None] = -1
        kinds = np.fromiter(map(codes.__getitem__, names), np.int64, len(names))
        return kinds[order], list(known.values())

    def bytes_in(self, i: int, j: int) -> int:
        return int(self._bytes_before[j] - self._bytes_before[i])

    def record(self, k: int) -> Record:
        """The Record of the k-th record in offset order."""
        origin = self._order[k]
        if origin < len(self._records):
            return self._records[origin]
        b = bisect_right(self._block_starts, origin) - 1
        return self._blocks[b].record(origin - self._block_starts[b])

    def pieces(self) -> Iterator[tuple[int, int]]:
        """Records i..j-1 read through one map at a time: a record streamed alone, or consecutive
        records of one map spanning at most WINDOW_BYTES."""
        n = len(self.offsets)
        # Where a window must stop: before a record streamed alone, or read through another map.
        stops = np.flatnonzero(self.alone | np.concatenate([[False], self.source_code[1:] != self.source_code[:-1]]))
        # How far records 0..k reach (the alone ones left out: each of the others spans at most
        # WINDOW_BYTES, so reach[k] <= offsets[k] + WINDOW_BYTES, and every window holds its first record).
        reach = np.maximum.accumulate(np.where(self.alone, 0, self.ends))
        i = 0
        while i < n:
            if self.alone[i]:
                yield i, i + 1
                i += 1
                continue
            j = int(np.searchsorted(reach, self.offsets[i] + WINDOW_BYTES, side="right"))
            after = int(np.searchsorted(stops, i, side="right"))
            if after < len(stops):
                j = min(j, int(stops[after]))
            j = max(j, i + 1)
            yield i, j
            i = j


def _files(records: list[Record], claimed: Sequence[ClaimedRecords]) -> list[_FileRecords]:
    by_path: dict[Path, tuple[list[Record], list[ClaimedRecords]]] = {}
    for r in records:
        by_path.setdefault(r.path, ([], []))[0].append(r)
    for block in claimed:
        by_path.setdefault(block.path, ([], []))[1].append(block)
    return [_FileRecords(path, mine, blocks, FileBytes(path))
            for path, (mine, blocks) in sorted(by_path.items(), key=lambda item: str(item[0]))]


def all_zero(where: ByteRange) -> bool:
    """Whether every byte of `where` is 0 (what torch.save under skip_data() leaves in a storage
    record until a later pass fills it in), read CHUNK_BYTES at a time, stopping at the first
    other byte; pages are released as it goes."""
    view = mapped_bytes(where)
    try:
        for start in range(0, len(view), CHUNK_BYTES):
            if np.frombuffer(view[start: start + CHUNK_BYTES], np.uint8).any():
                return False
        return True
    finally:
        view.release()
        release_mapped_pages(where)


def _map_size(source: FileBytes) -> int:
    """The length of the map records are read through (0 when it cannot be read: each record is
    then streamed alone, and `_scan_record` says what is wrong)."""
    try:
        return len(source.view())
    except CkptkitError:
        return 0


def _scan_window(ctx: ValidationContext, f: _FileRecords, i: int, j: int, done: int,
                 total: int) -> Iterator[Finding]:
    start, end = int(f.offsets[i]), int(f.ends[i:j].max())
    where = ByteRange(f.path, start, end + _SLACK - start, f.sources[int(f.source_code[i])])
    view = mapped_bytes(where)
    try:
        suspects = sorted(_bad_crcs(view, f, i, j) | _suspect_values(view, f, i, j))
    finally:
        view.release()
    for k in suspects:
        yield from _scan_record(ctx, f.record(k), done + f.bytes_in(i, k), total)
    release_mapped_pages(where)


def _bad_crcs(view: memoryview, f: _FileRecords, i: int, j: int) -> set[int]:
    """Records i..j-1 whose bytes do not have the CRC-32 the zip directory promises."""
    promised = f.crcs[i:j]
    have = np.flatnonzero(promised >= 0)
    if not have.size:
        return set()
    lo = f.offsets[i:j][have] - f.offsets[i]
    hi = lo + f.lengths[i:j][have]
    found = np.fromiter(map(zlib.crc32, map(view.__getitem__, map(slice, lo.tolist(), hi.tolist()))),
                        np.int64, have.size)
    return set((have[found != promised[have]] + i).tolist())


def _suspect_values(view: memoryview, f: _FileRecords, i: int, j: int) -> set[int]:
    """Records i..j-1 whose values could hold a finding, one numpy pass per dtype."""
    kinds = f.kinds[i:j]
    suspects: set[int] = set()
    for code in np.unique(kinds[kinds >= 0]).tolist():
        dtype = f.kind_dtypes[code]
        if dtype.name in _FLOATS or dtype.nonfinite_byte or dtype.name == "bool":
            group = np.flatnonzero(kinds == code)
            found = _suspect_group(view, int(f.offsets[i]), dtype, f.offsets[i:j][group],
                                   f.lengths[i:j][group], f.non_negative[i:j][group])
            suspects.update((group[found] + i).tolist())
    return suspects


def _suspect_group(view: memoryview, start: int, dtype: DType, offsets: np.ndarray,
                   lengths: np.ndarray, non_negative: np.ndarray) -> np.ndarray:
    """Which of these records (one dtype, in the window's map from `start`) could hold a finding:
    their indices in the group."""
    itemsize = dtype.itemsize
    base = int(offsets[0])
    at = offsets - base
    misaligned = at % itemsize != 0                  # scanned alone instead
    keep = ~misaligned & (lengths >= itemsize)
    kept = np.flatnonzero(keep)
    if not kept.size:
        return np.flatnonzero(misaligned)
    bounds = np.empty(2 * kept.size, np.int64)
    bounds[0::2] = at[kept] // itemsize
    bounds[1::2] = bounds[0::2] + lengths[kept] // itemsize
    values = _values(view, base - start, int(bounds.max()) + 1, dtype)
    lo = np.minimum.reduceat(values, bounds)[0::2]
    hi = np.maximum.reduceat(values, bounds)[0::2]
    if dtype.name == "bool":
        bad = hi > 1
    elif dtype.nonfinite_byte:
        bad = hi > 0
    else:
        bad = ~np.isfinite(lo) | ~np.isfinite(hi) | (non_negative[kept] & (lo < 0))
    return np.union1d(np.flatnonzero(misaligned), kept[bad])


def _values(view: memoryview, offset: int, count: int, dtype: DType) -> np.ndarray:
    """`count` elements from `offset` of the window, as reductions compare them: floats widened
    to float32 or float64, bool as bytes, float8 as 1 where the byte is a NaN/Inf pattern."""
    name = dtype.name
    if dtype.nonfinite_byte:
        raw = np.frombuffer(view, np.uint8, count, offset)
        mask, pattern = dtype.nonfinite_byte
        return ((raw & mask) == pattern).view(np.uint8)
    if name == "bool":
        return np.frombuffer(view, np.uint8, count, offset)
    raw = np.frombuffer(view, _FLOATS[name], count, offset)
    if name == "float16":
        return raw.astype(np.float32)
    if name == "bfloat16":     # the high half of a float32
        widened = raw.astype(np.uint32)
        widened <<= 16
        return widened.view(np.float32)
    return raw


def _scan_record(ctx: ValidationContext, record: Record, done: int, total: int) -> Iterator[Finding]:
    """One record streamed on its own, a chunk at a time: its CRC-32 and value counts, and the
    findings they make."""
    dtype = record.storage.dtype if record.storage is not None and record.values_checked else None
    non_negative = record.non_negative
    stats = ValueStats()
    crc = 0
    try:
        view = mapped_bytes(record.where)
    except CkptkitError as exc:
        yield Finding("integrity.missing-record", Severity.ERROR, _where(ctx, record), exc.message)
        return
    try:
        for start in range(0, len(view), CHUNK_BYTES):
            chunk = view[start: start + CHUNK_BYTES]
            if record.crc is not None:
                crc = zlib.crc32(chunk, crc)
            if dtype is not None:
                scan_chunk(chunk, dtype, non_negative, stats)
            if ctx.progress_callback is not None:
                ctx.progress_callback(done + start + len(chunk), total)
    finally:
        view.release()
    yield from _record_findings(ctx, record, crc, stats)


def _record_findings(ctx: ValidationContext, record: Record, crc: int, stats: ValueStats) -> Iterable[Finding]:
    where = _where(ctx, record)
    shared = f" (storage shared by {len(record.tensors)} tensors)" if len(record.tensors) > 1 else ""
    if record.crc is not None and crc != record.crc:
        yield Finding("deep.crc-mismatch", Severity.ERROR, where,
                      f"zip member {record.member}{shared}: CRC-32 expected {record.crc:#010x} (central "
                      f"directory), found {crc:#010x}: these bytes changed after the save (disk, copy or "
                      "transfer corruption); restore the file from a good copy")
    kind = "optimizer moment" if any(".state." in t for t in record.tensors) else "weight tensor"
    if stats.nonfinite:
        yield Finding("deep.non-finite", Severity.ERROR, where,
                      f"expected finite values in this {kind}{shared}, found {stats.nan} NaN and {stats.inf} "
                      f"Inf among {stats.values:,} values: training diverged before the save, or the bytes "
                      "are corrupt; resume from an earlier checkpoint")
    if stats.negative:
        yield Finding("deep.negative-second-moment", Severity.ERROR, where,
                      f"expected exp_avg_sq >= 0 (a running mean of squared gradients), found "
                      f"{stats.negative:,} negative values (min {stats.minimum:g}): the optimizer state is "
                      "corrupt and would make Adam divide by a NaN square root")
    if stats.bad_bool:
        yield Finding("deep.impossible-value", Severity.ERROR, where,
                      f"expected bool values 0 or 1, found {stats.bad_bool:,} other bytes: the bytes are corrupt")


def _where(ctx: ValidationContext, record: Record) -> str:
    member = None if record.path == ctx.ckpt.path else record.path.name
    return ctx.where(record.label, member)
