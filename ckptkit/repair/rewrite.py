"""Writing a changed tree back over a single-file checkpoint: atomically, verified, with a backup.

Only `data.pkl` is produced anew; every storage record is copied byte for byte from the file
being replaced by the kernel (copy_file_range; chunked pread/pwrite where unsupported), so
memory stays small whatever the checkpoint's size. Before the new file is renamed into place
it is read back: every record's bytes must have the CRC32 of the original's record (from the
original's zip directory, or computed for legacy files), the new directory must point at the
records that were checked, and data.pkl must hold the bytes that were written, which decode to
the intended tree. Each record is read back in a second thread while the next one is copied,
and the new data.pkl is decoded in a third, so the checks cost little extra time.
"""
from __future__ import annotations

import os
import queue
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ckptkit.core.checkpoint import Checkpoint, StorageRef
from ckptkit.core.errors import CkptkitError, UnsupportedFeatureError, WriteVerificationError
from ckptkit.formats.torch_zip import ArchiveIndex, RecordLocator, decode_data_pkl, read_archive_index, write_torch_zip
from ckptkit.formats.zip_directory import storage_crcs_recorded
from ckptkit.repair.changes import first_difference
from ckptkit.repair.manifests import ManifestRefresh
from ckptkit.storage.atomic import atomic_write_file, start_writeback
from ckptkit.storage.crc import range_crc32
from ckptkit.storage.pickle_writer import dumps_tree as dumps

REWRITABLE = ("torch-zip", "torch-legacy")
CHUNK = 8 << 20


def check_rewritable(ckpt: Checkpoint) -> None:
    """Raise a one-line error for formats a repair cannot write back."""
    if ckpt.format == "safetensors":
        raise UnsupportedFeatureError(ckpt.path, "a safetensors file holds tensors only: it has no training "
                                      "progress or config to repair (progress lives in the trainer-state "
                                      "file beside it, e.g. training_state.pth or trainer_state.json)")
    if ckpt.format not in REWRITABLE:
        raise UnsupportedFeatureError(ckpt.path, f"a {ckpt.format} checkpoint cannot be repaired yet: ckptkit rewrites "
                                      "torch.save files, Hugging Face Trainer checkpoint-N folders "
                                      "(trainer_state.json) and folders holding training_state.pth")


def check_writable_tree(ckpt: Checkpoint) -> None:
    """Raise (naming the file) when the tree holds a value the pickle writer cannot re-emit."""
    try:
        dumps_tree(ckpt.tree)
    except CkptkitError as exc:
        if exc.path is None:
            raise type(exc)(ckpt.path, f"cannot be rewritten: {exc.message}") from None
        raise


def rewrite_note(ckpt: Checkpoint) -> str | None:
    if ckpt.format == "torch-legacy":
        return ("the legacy (pre-zip) file is rewritten as a torch.save zip archive (torch >= 1.6 reads "
                "it the same way); the backup keeps the legacy bytes")
    return None


def rewrite_file(ckpt: Checkpoint, backup: Path | None) -> None:
    """Replace `ckpt.path` with `ckpt.tree` (already changed in memory) as a torch zip archive."""
    path = ckpt.path
    prefix = ckpt.details.zip_prefix or path.name.split(".")[0] or "archive"
    data_pkl, storages = dumps_tree(ckpt.tree)
    expected = original_crcs(ckpt, storages)
    checked: dict[str, tuple[int, int]] = {}
    # The new data.pkl must decode to the intended tree. That is a pure-Python unpickle, so it
    # runs beside the copy (which waits in the kernel); `verify` then only has to find the same
    # bytes in the new file, where a reader finds them.
    decodes = Beside(lambda: check_decodes_to(path, data_pkl, ckpt.tree, set(expected)))

    def write(f: BinaryIO) -> None:
        checker = RecordChecker(path, Path(f.name), expected)
        try:
            write_torch_zip(f, ckpt.tree, prefix, CHUNK, known_crcs=expected, record_written=checker.submit,
                            dumped=(data_pkl, storages))
        finally:
            checker.finish()
        checked.update(checker.checked)

    manifest = ManifestRefresh.covering(path)

    def verify(tmp: Path) -> None:
        decodes.result()
        check_archive(path, tmp, data_pkl, expected, checked)
        if manifest is not None:
            manifest.take()   # just before the rename: it vouches for the old bytes

    try:
        atomic_write_file(path, write, verify=verify, backup=backup)
    except BaseException:
        if manifest is not None:
            manifest.put_back()
        raise
    finally:
        decodes.result(raise_error=False)
    if manifest is not None:
        manifest.renew(ckpt.tree)


class Beside:
    """Runs `work()` on a thread of its own; `result()` waits for it and re-raises its error."""

    def __init__(self, work: Callable[[], None]) -> None:
        self._error: BaseException | None = None
        self._work = work
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._work()
        except BaseException as exc:   # handed to the caller of result()
            self._error = exc

    def result(self, raise_error: bool = True) -> None:
        self._thread.join()
        if raise_error and self._error is not None:
            raise self._error


def check_decodes_to(original: Path, data_pkl: bytes, tree: Any, keys: set[str]) -> None:
    """`data_pkl` unpickles (as every ckptkit reader unpickles) to `tree`, naming exactly `keys`."""
    index = ArchiveIndex({}, "archive", data_pkl)
    result, storages = decode_data_pkl(original, index)
    decoded = result.value
    where = first_difference(tree, decoded)
    if where is not None or set(storages) != keys:
        raise WriteVerificationError(original, f"the rewritten index decodes differently "
                                     f"({where or 'storage records'}); nothing was replaced")


def check_archive(original: Path, written: Path, data_pkl: bytes, expected: dict[str, int],
                  checked: dict[str, tuple[int, int]]) -> None:
    """The new archive, read as a reader reads it, holds `data_pkl` and, for every storage
    record, the bytes that were read back: its directory has their CRC32 and points at them."""
    index = read_archive_index(written)
    if index.data_pkl != data_pkl:
        raise WriteVerificationError(original, "the rewritten file's data.pkl read back with other bytes "
                                     "than were written; nothing was replaced")
    if set(checked) != set(expected):
        raise WriteVerificationError(original, "not every storage record was read back; nothing was replaced")
    locate = RecordLocator(written, index)
    for key, crc in expected.items():
        info = index.record_info(key)
        where = locate(key) if info is not None else None
        if info is None or where is None or info.CRC != crc or (where.offset, where.length) != checked[key]:
            raise WriteVerificationError(original, f"storage record data/{key}: the new archive's directory "
                                         "does not match the record that was written; nothing was replaced")


class RecordChecker:
    """Reads each record back (CRC32 of the bytes in the new file) while the next one is copied.

    The copy runs in the kernel and the check in this thread, so on two cores they overlap;
    page-cache reads with pread into one reused buffer keep the resident set small.
    """

    def __init__(self, original: Path, new: Path, expected: dict[str, int]) -> None:
        self.original, self.new, self.expected = original, new, expected
        self.checked: dict[str, tuple[int, int]] = {}
        self.error: BaseException | None = None
        self._queue: queue.Queue[tuple[str, int, int] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def submit(self, key: str, offset: int, length: int) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put((key, offset, length))

    def finish(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        fd = os.open(self.new, os.O_RDONLY)
        try:
            while (item := self._queue.get()) is not None:
                if self.error is None:
                    key, offset, length = item
                    start_writeback(fd, offset, length)   # the disk works while we read and copy on
                    if range_crc32(fd, self.new, offset, length, threads=1) != self.expected[key]:
                        self.error = WriteVerificationError(self.original, f"storage record data/{key} read back "
                                                            "with other bytes than the original record (the "
                                                            "original may be damaged: run ckptkit validate "
                                                            "--deep); nothing was replaced")
                    self.checked[key] = (offset, length)
        except BaseException as exc:   # reported to the writer on its next submit or at finish
            self.error = exc
        finally:
            os.close(fd)


def dumps_tree(tree: Any) -> tuple[bytes, dict[str, StorageRef]]:
    """The pickle bytes for `tree` and every storage it refers to (tensors inside pickled
    objects included), by key."""

    return dumps(tree)


def original_crcs(ckpt: Checkpoint, storages: dict[str, StorageRef]) -> dict[str, int]:
    """The CRC32 of every storage record in `storages`, as the original file holds it."""
    prefix = ckpt.details.zip_prefix
    if ckpt.format == "torch-zip" and prefix is not None:
        with zipfile.ZipFile(ckpt.path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
        if storage_crcs_recorded(infos):
            return {key: infos[f"{prefix}/data/{key}"].CRC for key in storages}
    return {key: record_crc(s) for key, s in storages.items()}     # (or written without them: computed)


def record_crc(storage: StorageRef) -> int:
    where = storage.byte_range()
    fd = os.open(where.path, os.O_RDONLY)
    try:
        return range_crc32(fd, where.path, where.offset, where.length)
    finally:
        os.close(fd)
