"""What `--deep` checks, record by record: a byte range of a file and what it should hold."""
from __future__ import annotations

from pathlib import Path

from ckptkit.core.byte_source import FileBytes
from ckptkit.core.checkpoint import ByteRange, StorageRef

NON_NEGATIVE_SUFFIXES = ("exp_avg_sq", "max_exp_avg_sq", "square_avg", "exp_avg_sq_row", "exp_avg_sq_col")


class Record:
    """A byte range to stream, with what we know it should be. (Slots, and the range kept as its
    parts: a checkpoint of 80,000 storages makes 80,000 of these.)"""

    __slots__ = ("path", "offset", "length", "source", "storage", "member", "crc", "tensors", "values_checked",
                 "non_negative")

    def __init__(self, path: Path, offset: int, length: int, source: FileBytes | None,
                 storage: StorageRef | None = None, member: str | None = None, crc: int | None = None,
                 key: str | None = None, values_checked: bool = False) -> None:
        """`key`: the first tensor found in it (`add` adds more); `values_checked`: that tensor's."""
        self.path, self.offset, self.length, self.source = path, offset, length, source
        self.storage = storage
        self.member = member            # zip member name
        self.crc = crc                  # CRC-32 the zip central directory promises
        self.tensors: list[str] = [] if key is None else [key]
        self.values_checked = values_checked    # holds model weights or optimizer state: NaN/Inf are errors
        # holds a second moment (exp_avg_sq...): negative values are errors
        self.non_negative = key is not None and key.endswith(NON_NEGATIVE_SUFFIXES)

    def add(self, key: str, values_checked: bool) -> None:
        """Tensor `key` lies in this record too; `values_checked`: it is model or optimizer state."""
        self.tensors.append(key)
        if values_checked:
            self.values_checked = True
        if key.endswith(NON_NEGATIVE_SUFFIXES):
            self.non_negative = True

    @classmethod
    def at(cls, where: ByteRange, storage: StorageRef | None = None, member: str | None = None,
           crc: int | None = None) -> Record:
        return cls(where.path, where.offset, where.length, where.source, storage, member, crc)

    @property
    def where(self) -> ByteRange:
        return ByteRange(self.path, self.offset, self.length, self.source)

    @property
    def label(self) -> str:
        return self.tensors[0] if self.tensors else (self.member or f"bytes at {self.offset}")
