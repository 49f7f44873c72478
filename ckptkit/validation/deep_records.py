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


class ClaimedRecords:
    """Records of one archive made column by column (`deep._Archives.claim`): one storage each,
    alone in a zip member that checked out all at once, the i-th of each list describing the
    i-th record. `record(i)` makes that record's Record only when it is read on its own (its
    bytes look wrong, or it is streamed alone): 80,000 Records cost more than checking them."""

    __slots__ = ("path", "source", "offsets", "lengths", "crcs", "storages", "members", "keys", "checked")

    def __init__(self, path: Path, source: FileBytes) -> None:
        self.path, self.source = path, source
        self.offsets: list[int] = []
        self.lengths: list[int] = []
        self.crcs: list[int] = []
        self.storages: list[StorageRef] = []
        self.members: list[str] = []
        self.keys: list[str] = []           # the one tensor in each
        self.checked: list[bool] = []       # model or optimizer state: its values are checked

    def __len__(self) -> int:
        return len(self.offsets)

    def record(self, i: int) -> Record:
        crc = self.crcs[i]
        return Record(self.path, self.offsets[i], self.lengths[i], self.source, self.storages[i],
                      self.members[i], None if crc < 0 else crc, self.keys[i], self.checked[i])
