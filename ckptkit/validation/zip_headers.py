"""Every member of a plain zip archive checked against its local header at once, with numpy.

`zip_records._member` compares one member's local header (and data descriptor) with its
central-directory entry in Python: about 10 us a member, most of `--deep` on an archive of
80,000 small storage records. Here the same comparisons run as array operations over all
members together, for the shape torch writes (ASCII names, stored, 'FB'-padded, a data
descriptor with its signature). A member is `plain` only when every comparison `_member` makes
agrees; every other member (damaged, or merely laid out differently) goes through `_member`
itself, so the findings, and their words, stay `_member`'s.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ckptkit.formats.zip_directory import ZipDirectory

_LOCAL_MAGIC, _DESCRIPTOR_MAGIC = 0x04034B50, 0x08074B50
_STREAMED = 0x08
BLOCK = 8192          # members gathered per numpy call (an index of BLOCK x 46 positions)
_PAD_TAG, _PAD_BYTE = 0x4246, ord("Z")      # torch's "FB" extra field, filled with "Z"


@dataclass
class PlainMembers:
    """The central directory's names in order; for each, whether it checked out here and, if so,
    where its data lies and the CRC-32 it promises."""

    names: list[str]
    plain: np.ndarray          # bool per name
    offsets: np.ndarray        # int64: data offset in the file
    sizes: np.ndarray          # int64: stored size
    crcs: np.ndarray           # int64


# The fixed parts of a central-directory entry and of a local header (APPNOTE 4.3.12, 4.3.7),
# read for every member at once as numpy records.
_CENTRAL = np.dtype([("magic", "<u4"), ("made_by", "<u2"), ("version", "u1"), ("os", "u1"), ("flags", "<u2"),
                     ("method", "<u2"), ("time", "<u2"), ("date", "<u2"), ("crc", "<u4"), ("csize", "<u4"),
                     ("usize", "<u4"), ("name_len", "<u2"), ("extra_len", "<u2"), ("comment_len", "<u2"),
                     ("disk", "<u2"), ("internal", "<u2"), ("external", "<u4"), ("header", "<u4")])
_LOCAL = np.dtype([("magic", "<u4"), ("version", "<u2"), ("flags", "<u2"), ("method", "<u2"), ("time", "<u2"),
                   ("date", "<u2"), ("crc", "<u4"), ("csize", "<u4"), ("usize", "<u4"), ("name_len", "<u2"),
                   ("extra_len", "<u2")])
_DESCRIPTOR = np.dtype([("magic", "<u4"), ("crc", "<u4"), ("csize", "<u4"), ("usize", "<u4")])


def plain_members(view: memoryview, directory: ZipDirectory) -> PlainMembers:
    data, positions, concat = directory.layout()
    names = list(positions)
    n = len(names)
    central_bytes = np.frombuffer(data, np.uint8)
    at = np.fromiter(positions.values(), np.int64, n)
    c = _records(central_bytes, at, _CENTRAL)
    crc, csize, usize = c["crc"].astype(np.int64), c["csize"].astype(np.int64), c["usize"].astype(np.int64)
    name_len = c["name_len"].astype(np.int64)
    header = c["header"].astype(np.int64) + concat
    file = np.frombuffer(view, np.uint8)
    size = len(file)
    ok = (header >= 0) & (header + _LOCAL.itemsize <= size) & (c["method"] == 0) & (csize == usize)
    h = np.where(ok, header, 0)
    local = _records(file, h, _LOCAL)
    ok &= ((local["magic"] == _LOCAL_MAGIC) & (local["version"] == c["version"]) & (local["flags"] == c["flags"])
           & (local["method"] == c["method"]) & (local["time"] == c["time"]) & (local["date"] == c["date"])
           & (local["name_len"] == c["name_len"]))
    extra_len = local["extra_len"].astype(np.int64)
    extra = h + _LOCAL.itemsize + name_len
    offset = extra + extra_len
    ok &= offset + csize <= size
    ok &= _same_ascii_names(file, central_bytes, np.where(ok, h + _LOCAL.itemsize, 0), at + _CENTRAL.itemsize,
                            np.where(ok, name_len, 0))
    ok &= _padding_intact(file, np.where(ok, extra, 0), np.where(ok, extra_len, 0))
    promised = (local["crc"] == c["crc"]) & (local["csize"] == c["csize"]) & (local["usize"] == c["usize"])
    zeros = (local["crc"] == 0) & (local["csize"] == 0) & (local["usize"] == 0)
    streamed = (c["flags"] & _STREAMED) != 0
    ok &= np.where(streamed, (promised | zeros) & _descriptor_agrees(file, np.where(ok, offset + csize, 0),
                                                                        crc, csize, usize), promised)
    return PlainMembers(names, ok, offset, csize, crc)


def _records(buf: np.ndarray, at: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The `dtype.itemsize` bytes at each of `at` (all inside `buf`), as records of `dtype`;
    gathered BLOCK positions at a time, so the index array stays small whatever the count."""
    out = np.empty(len(at), dtype)
    raw = out.view(np.uint8).reshape(len(at), dtype.itemsize)
    width = np.arange(dtype.itemsize, dtype=np.int64)
    for start in range(0, len(at), BLOCK):
        part = at[start: start + BLOCK]
        raw[start: start + len(part)] = buf[part[:, None] + width]
    return out


def _u16(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    return buf[at].astype(np.int64) | buf[at + 1].astype(np.int64) << 8


def _positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Every byte position of the ranges starts[i] + 0..lengths[i], range after range."""
    first = np.cumsum(lengths) - lengths
    return np.repeat(starts - first, lengths) + np.arange(int(lengths.sum()))


def _mark(out: np.ndarray, bad_bytes: np.ndarray, lengths: np.ndarray) -> None:
    """Set out[i] where a byte of range i (laid out as `_positions` lays them) is bad."""
    at = np.flatnonzero(bad_bytes)
    if at.size:
        out[np.searchsorted(np.cumsum(lengths), at, side="right")] = True


def _same_ascii_names(file: np.ndarray, central: np.ndarray, local_at: np.ndarray, central_at: np.ndarray,
                      lengths: np.ndarray) -> np.ndarray:
    """The local header repeats the central directory's name byte for byte, all ASCII (then the
    name `_member` re-encodes is those very bytes, under either of zip's name encodings)."""
    differ = np.zeros(len(lengths), bool)
    for start in range(0, len(lengths), BLOCK):
        part = slice(start, start + BLOCK)
        local = file[_positions(local_at[part], lengths[part])]
        _mark(differ[part], (local != central[_positions(central_at[part], lengths[part])]) | (local >= 0x80),
              lengths[part])
    return ~differ


def _padding_intact(file: np.ndarray, at: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """No extra field, or one 'FB' field covering it all, filled with 'Z' (as torch pads)."""
    fits = lengths >= 4
    tag_at = np.where(fits, at, 0)
    one_field = fits & (_u16(file, tag_at) == _PAD_TAG) & (_u16(file, tag_at + 2) == lengths - 4)
    fill_at, fill = np.where(one_field, at + 4, 0), np.where(one_field, lengths - 4, 0)
    changed = np.zeros(len(lengths), bool)
    for start in range(0, len(lengths), BLOCK):
        part = slice(start, start + BLOCK)
        _mark(changed[part], file[_positions(fill_at[part], fill[part])] != _PAD_BYTE, fill[part])
    return (lengths == 0) | (one_field & ~changed)


def _descriptor_agrees(file: np.ndarray, at: np.ndarray, crc: np.ndarray, csize: np.ndarray,
                       usize: np.ndarray) -> np.ndarray:
    """The data descriptor after a streamed member (with its signature, 32-bit sizes) repeats
    the CRC and sizes; any other form is left to `_member`."""
    fits = at + _DESCRIPTOR.itemsize <= len(file)
    d = _records(file, np.where(fits, at, 0), _DESCRIPTOR)
    return fits & (d["magic"] == _DESCRIPTOR_MAGIC) & (d["crc"] == crc) & (d["csize"] == csize) & (d["usize"] == usize)
