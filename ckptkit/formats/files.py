"""The single-file formats, how a file's format is told from its first bytes, and how one is
opened: the registry folder formats use for their members, below `ckptkit.formats`."""
from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ckptkit.core.checkpoint import Checkpoint
from ckptkit.core.errors import CkptkitError, MissingFileError, NotACheckpointError
from ckptkit.formats.base import HEAD_BYTES, Format
from ckptkit.formats.pickle_file import NumpyFormat, PickleFormat
from ckptkit.formats.safetensors_file import SafetensorsFormat
from ckptkit.formats.torch_legacy import TorchLegacyFormat
from ckptkit.formats.torch_zip import TorchZipFormat

# PickleFormat comes last: protocol 0/1 pickles have no magic number, only opcodes that parse.
FILE_FORMATS: list[Format] = [TorchZipFormat(), TorchLegacyFormat(), SafetensorsFormat(), NumpyFormat(),
                              PickleFormat()]


def detect_file_format(path: Path) -> Format:
    """The format of the file at `path` (which exists), from its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        raise MissingFileError(path, f"cannot be read: {exc.strerror}") from None
    if not head:
        raise NotACheckpointError(path, "empty file (0 bytes): the save was interrupted before "
                                  "anything was written")
    for fmt in FILE_FORMATS:
        if fmt.sniff(path, head):
            return fmt
    raise NotACheckpointError(path, f"not a checkpoint ckptkit knows ({_describe_head(head)})")


def open_file(path: Path) -> Checkpoint:
    """Read one checkpoint file's index (a folder's member is read exactly like the file alone)."""
    return read_with(detect_file_format(path), path)


def read_with(fmt: Format, path: Path) -> Checkpoint:
    """`fmt.read(path)`, with an OS error turned into a one-line error naming the file."""
    try:
        with cyclic_gc_paused():
            return fmt.read(path)
    except CkptkitError:
        raise
    except OSError as exc:
        raise MissingFileError(path, f"cannot be read: {exc.strerror or exc}") from None


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cycle collector while an index is decoded.

    Decoding 80,000 tensor records allocates a few hundred thousand objects that all stay
    alive; the collector keeps re-scanning them as they pile up (about a third of the reading
    time, measured on `scripts/bench_scale.py`'s .pth) and frees nothing, since an index tree
    holds no cycles. Reference counting still frees everything else as usual; the collector
    runs again once the reading is done.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            # The objects made meanwhile count as new: the collector's first run would scan them
            # all (about a tenth of reading 100,000 safetensors entries). freeze + unfreeze moves
            # every tracked object to the oldest generation unscanned and resets the counts. Not
            # when the program froze objects itself (e.g. before forking workers): unfreeze would
            # thaw those too.
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


# Files people mistake for PyTorch checkpoints, by their magic bytes: named in the error so the
# user knows what they hold (each is read by its own tool, not by torch.load).
_OTHER_FORMATS = ((b"GGUF", "a GGUF model file of llama.cpp, which holds no PyTorch training state"),
                  (b"\x89HDF\r\n\x1a\n", "an HDF5 file, as Keras and TensorFlow save, not a PyTorch checkpoint"),
                  (b"\x7fELF", "an ELF executable, not a checkpoint"),
                  (b"\x1f\x8b", "a gzip archive: unpack it first, with gunzip or tar -xzf"),
                  (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive: unpack it first"),
                  (b"\xfd7zXZ\x00", "an xz archive: unpack it first, with unxz or tar -xJf"),
                  (b"(\xb5/\xfd", "a zstd archive: unpack it first, with zstd -d"))


def _describe_head(head: bytes) -> str:
    for magic, what in _OTHER_FORMATS:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:   # a character cut by the end of the head is still text
        text = head[: exc.start].decode("utf-8") if exc.start >= max(1, len(head) - 3) else "\x00"
    if any(ord(c) < 32 and c not in "\t\r\n" for c in text):   # NULs and control bytes: binary
        return f"unknown binary content starting {head[:8].hex(' ')}"
    first = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"a text file starting {first!r}"
