"""`--deep`: read every byte of tensor data once, streaming, and check what the bytes say.

One pass per record (a torch storage, a safetensors tensor, a zip member), in file order,
memory-mapped and released page by page so peak memory stays a few chunks whatever the file
size. For each record: the zip CRC-32 against the central directory (torch zips carry one per
member, so a single flipped bit anywhere in tensor data is always caught), and for floating
storages NaN/Inf counts and, for Adam's `exp_avg_sq`, negative values. safetensors and legacy
files carry no checksum: there only values that are impossible can be caught.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ckptkit.core.checkpoint import (
    ByteRange,
    Finding,
    Severity,
    StorageRef,
    TensorRef,
    iter_tensors,
    mapped_bytes,
    release_mapped_pages,
)
from ckptkit.core.errors import CkptkitError, UnsupportedFeatureError
from ckptkit.formats.dcp import TensorInChunksError
from ckptkit.validation.zip_records import ZipRecord, zip_records

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext
    from ckptkit.validation.value_scan import ValueStats

CHUNK_BYTES = 8 << 20
NON_NEGATIVE_SUFFIXES = ("exp_avg_sq", "max_exp_avg_sq", "square_avg", "exp_avg_sq_row", "exp_avg_sq_col")


@dataclass
class Record:
    """A byte range to stream, with what we know it should be."""

    where: ByteRange
    storage: StorageRef | None = None
    member: str | None = None           # zip member name
    crc: int | None = None              # CRC-32 the zip central directory promises
    tensors: list[str] = field(default_factory=list)
    values_checked: bool = False        # holds model weights or optimizer state: NaN/Inf are errors

    @property
    def label(self) -> str:
        return self.tensors[0] if self.tensors else (self.member or f"bytes at {self.where.offset}")


def check_deep(ctx: ValidationContext) -> Iterable[Finding]:
    if not ctx.deep:
        return
    records, problems = _plan(ctx)
    yield from problems
    total = sum(r.where.length for r in records)
    done = 0
    released = _Releaser()
    for record in records:
        yield from _scan_record(ctx, record, done, total)
        released.add(record.where)
        done += record.where.length
    released.flush()
    if ctx.progress_callback is not None:
        ctx.progress_callback(total, total)


def _plan(ctx: ValidationContext) -> tuple[list[Record], list[Finding]]:
    """Every record of every file, in file order; zip records carry their promised CRC."""
    by_storage: dict[int, Record] = {}
    problems: list[Finding] = []
    # Other tensors (a Lightning callback's best score is +inf by design) are CRC-checked only.
    checked = ({id(t) for t in ctx.ckpt.model.values()} | {id(t) for _, t in iter_tensors(ctx.ckpt.optimizer)}
               | {id(c.tensor) for chunks in ctx.ckpt.chunks.values() for c in chunks})   # DCP: app state
    unreadable: set[int] = set()
    for key, tensor in _record_tensors(ctx):
        record = by_storage.get(id(tensor.storage))
        if record is None and id(tensor.storage) in unreadable:
            continue
        if record is None:
            try:
                where = tensor.storage.byte_range()
            except TensorInChunksError:          # a DCP tensor kept in chunks: _record_tensors lists them
                continue
            except UnsupportedFeatureError as exc:
                unreadable.add(id(tensor.storage))
                problems.append(Finding("integrity.unreadable-values", Severity.WARNING, ctx.where(key),
                                        f"--deep could not read this tensor's bytes, so its values were not "
                                        f"checked: {exc.message}"))
                continue
            except CkptkitError as exc:
                problems.append(Finding("integrity.missing-record", Severity.ERROR, ctx.where(key),
                                        f"the bytes of this tensor cannot be found: {exc.message}"))
                continue
            record = by_storage[id(tensor.storage)] = Record(where, tensor.storage)
        record.tensors.append(key)
        record.values_checked = record.values_checked or id(tensor) in checked
    located = {(r.where.path, r.where.offset): r for r in by_storage.values()}
    records = list(by_storage.values())
    for path in _zip_files(ctx, records):
        zrecords, zproblems = zip_records(path)
        problems += [_zip_finding(ctx, path, text) for text in zproblems]
        for z in zrecords:
            records += _attach_crc(located, z)
    records.sort(key=lambda r: (str(r.where.path), r.where.offset))
    return records, problems


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
    if record is not None and record.where.length == z.where.length:
        record.member, record.crc = z.member, z.crc
        return []
    return [Record(z.where, member=z.member, crc=z.crc)]


def _zip_files(ctx: ValidationContext, records: list[Record]) -> list[Path]:
    paths = dict.fromkeys([*ctx.ckpt.files, *(r.where.path for r in records)])
    out = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                if f.read(4) == b"PK\x03\x04":
                    out.append(Path(path))
        except OSError:
            continue
    return out


def _zip_finding(ctx: ValidationContext, path: Path, text: str) -> Finding:
    member = None if path == ctx.ckpt.path else path.name
    return Finding("deep.zip-header-mismatch", Severity.ERROR, ctx.where(None, member), text)


def _scan_record(ctx: ValidationContext, record: Record, done: int, total: int) -> Iterator[Finding]:
    # numpy only here: commands that never read tensor bytes (inspect, ls) stay numpy-free.
    from ckptkit.validation.value_scan import ValueStats, scan_chunk

    dtype = record.storage.dtype if record.storage is not None and record.values_checked else None
    non_negative = any(t.endswith(NON_NEGATIVE_SUFFIXES) for t in record.tensors)
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


class _Releaser:
    """Unmaps scanned records' pages (see `release_mapped_pages`) a span of at least RELEASE_BYTES
    at a time: records lie in file order, and one system call per 256-byte optimizer record cost
    more than scanning it. Memory stays at about one span plus one record."""

    RELEASE_BYTES = 16 << 20

    def __init__(self) -> None:
        self.span: ByteRange | None = None

    def add(self, where: ByteRange) -> None:
        span = self.span
        if span is not None and span.source is where.source and span.offset <= where.offset:
            end = max(span.offset + span.length, where.offset + where.length)
            self.span = span.at(span.offset, end - span.offset)
        else:
            self.flush()
            self.span = where
        if self.span.length >= self.RELEASE_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.span is not None:
            release_mapped_pages(self.span)
            self.span = None


def _record_findings(ctx: ValidationContext, record: Record, crc: int, stats: ValueStats) -> Iterator[Finding]:
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
    member = None if record.where.path == ctx.ckpt.path else record.where.path.name
    return ctx.where(record.label, member)
