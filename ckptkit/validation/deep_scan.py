"""`--deep`'s pass over the bytes: many small records checked together, one window at a time.

A checkpoint of 80,000 small storages spent ~30 us a record in Python (a map slice, a CRC call,
two numpy reductions, findings) whatever its size. Here records are taken a window of at most
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
from collections.abc import Iterable, Iterator
from itertools import compress
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ckptkit.core.byte_source import FileBytes
from ckptkit.core.checkpoint import ByteRange, Finding, Severity, mapped_bytes, release_mapped_pages
from ckptkit.core.errors import CkptkitError
from ckptkit.validation.deep_records import Record
from ckptkit.validation.value_scan import ValueStats, scan_chunk

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext

CHUNK_BYTES = 8 << 20
WINDOW_BYTES = 8 << 20
_SLACK = 8     # bytes past a window's last record that stay readable: one element of any dtype
_FLOATS = {"float64": "<f8", "float32": "<f4", "float16": "<f2", "bfloat16": "<u2"}
_F8_MASKS = {"float8_e4m3fn": 0x7F, "float8_e5m2": 0x7C}     # as value_scan counts them


def scan_records(ctx: ValidationContext, records: list[Record]) -> Iterator[Finding]:
    """The findings of every record, in record order, as `_scan_record` words them."""
    total = sum(r.length for r in records)
    done = 0
    for window in _windows(records):
        if window.alone:
            record = window.records[0]
            yield from _scan_record(ctx, record, done, total)
            release_mapped_pages(record.where)
        else:
            yield from _scan_window(ctx, window, done, total)
        done += sum(r.length for r in window.records)
        if ctx.progress_callback is not None:
            ctx.progress_callback(done, total)
    if ctx.progress_callback is not None:
        ctx.progress_callback(total, total)


class _Window:
    """Consecutive records of one file read through one map: `start`..`end` covers them all."""

    __slots__ = ("records", "start", "end", "alone")

    def __init__(self, record: Record, alone: bool) -> None:
        self.records, self.start, self.end, self.alone = [record], record.offset, record.offset + record.length, alone


def _windows(records: list[Record]) -> Iterator[_Window]:
    sizes: dict[int, int] = {}
    maps: dict[Path, FileBytes] = {}
    window: _Window | None = None
    path, source, size = None, None, 0        # the open window's
    for r in records:
        if r.source is None:      # a range mapped when read: one map per file, not one per record
            r.source = maps.setdefault(r.path, FileBytes(r.path))
        end = r.offset + r.length
        if window is not None and r.source is source and (r.path is path or r.path == path) \
                and r.offset >= window.start and end - window.start <= WINDOW_BYTES and end + _SLACK <= size:
            window.records.append(r)
            if end > window.end:
                window.end = end
            continue
        if window is not None:
            yield window
        path, source, size = r.path, r.source, _file_size(r, sizes)
        alone = r.length > WINDOW_BYTES or r.offset < 0 or end + _SLACK > size
        window = _Window(r, alone)
        if alone:
            yield window
            window = None
    if window is not None:
        yield window


def _file_size(record: Record, sizes: dict[int, int]) -> int:
    """The length of the map the record is read through (0 when it cannot be read: then the
    record is scanned alone, and `_scan_record` says what is wrong)."""
    key = id(record.source)
    if key not in sizes:
        try:
            sizes[key] = len(record.where.mapped())
        except CkptkitError:
            sizes[key] = 0
    return sizes[key]


def _scan_window(ctx: ValidationContext, window: _Window, done: int, total: int) -> Iterator[Finding]:
    first = window.records[0]
    where = ByteRange(first.path, window.start, window.end + _SLACK - window.start, first.source)
    view = mapped_bytes(where)
    try:
        suspects = _bad_crcs(view, window) | _suspect_values(view, window)
    finally:
        view.release()
    before = done
    for record in window.records:
        if id(record) in suspects:
            yield from _scan_record(ctx, record, before, total)
        before += record.length
    release_mapped_pages(where)


def _bad_crcs(view: memoryview, window: _Window) -> set[int]:
    start, crc32 = window.start, zlib.crc32
    return {id(r) for r in window.records
            if r.crc is not None and crc32(view[r.offset - start: r.offset - start + r.length]) != r.crc}


def _suspect_values(view: memoryview, window: _Window) -> set[int]:
    """Records whose values could hold a finding, one numpy pass per dtype."""
    groups: dict[str, list[Record]] = {}
    for r in window.records:
        if r.values_checked and r.storage is not None:
            groups.setdefault(r.storage.dtype.name, []).append(r)
    suspects: set[int] = set()
    for name, group in groups.items():
        if name in _FLOATS or name in _F8_MASKS or name == "bool":
            suspects |= _suspect_group(view, window.start, name, group)
    return suspects


def _suspect_group(view: memoryview, start: int, name: str, group: list[Record]) -> set[int]:
    itemsize = group[0].storage.dtype.itemsize if group[0].storage is not None else 1
    base = group[0].offset
    at = np.fromiter(map(attrgetter("offset"), group), np.int64, len(group)) - base
    lengths = np.fromiter(map(attrgetter("length"), group), np.int64, len(group))
    misaligned = at % itemsize != 0
    suspects = {id(group[i]) for i in np.flatnonzero(misaligned).tolist()}    # scanned alone instead
    keep = ~misaligned & (lengths >= itemsize)
    aligned = list(compress(group, keep.tolist()))
    if not aligned:
        return suspects
    first, count = at[keep] // itemsize, lengths[keep] // itemsize
    bounds = np.empty(2 * len(aligned), np.int64)
    bounds[0::2], bounds[1::2] = first, first + count
    values = _values(view, base - start, int(bounds.max()) + 1, name)
    lo = np.minimum.reduceat(values, bounds)[0::2]
    hi = np.maximum.reduceat(values, bounds)[0::2]
    if name == "bool":
        bad = hi > 1
    elif name in _F8_MASKS:
        bad = hi > 0
    else:
        must_be_positive = np.fromiter(map(attrgetter("non_negative"), aligned), bool, len(aligned))
        bad = ~np.isfinite(lo) | ~np.isfinite(hi) | (must_be_positive & (lo < 0))
    return suspects | {id(aligned[i]) for i in np.flatnonzero(bad).tolist()}


def _values(view: memoryview, offset: int, count: int, name: str) -> np.ndarray:
    """`count` elements from `offset` of the window, as reductions compare them: floats widened
    to float32 or float64, bool as bytes, float8 as 1 where the byte is a NaN/Inf pattern."""
    if name in _F8_MASKS:
        raw = np.frombuffer(view, np.uint8, count, offset)
        mask = _F8_MASKS[name]
        return ((raw & mask) == mask).view(np.uint8)
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
