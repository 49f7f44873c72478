"""All on-disk formats ckptkit reads, registered in one place, and `open_checkpoint`.

To add a format: write a module with a class implementing `ckptkit.formats.base.Format` and
append an instance to FILE_FORMATS or to the list in `folder_formats()`. Order matters only
where two sniffers could both say yes: the more specific comes first. Folder formats are
imported on first use, so commands given a single file never load them.
"""
from __future__ import annotations

import gc
import os
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
_FOLDER_FORMATS: list[Format] = []


def folder_formats() -> list[Format]:
    """The folder formats, strongest markers first (save_pretrained's config + weights are what
    the others also contain); imported on first use."""
    if not _FOLDER_FORMATS:
        from ckptkit.formats.accelerate_state import AccelerateFormat
        from ckptkit.formats.dcp import DcpFormat
        from ckptkit.formats.hf_trainer import HFTrainerFormat
        from ckptkit.formats.safetensors_shards import SafetensorsShardsFormat
        from ckptkit.formats.save_pretrained import SavePretrainedFormat

        _FOLDER_FORMATS.extend([DcpFormat(), HFTrainerFormat(), AccelerateFormat(), SavePretrainedFormat(),
                                SafetensorsShardsFormat()])
    return _FOLDER_FORMATS


def detect_format(path: str | os.PathLike[str]) -> Format:
    """The format of the checkpoint at `path`, from its content; raises CkptkitError if none."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(path, "no such file or folder")
    if path.is_dir():
        for fmt in folder_formats():
            if fmt.sniff(path, b""):
                return fmt
        raise NotACheckpointError(path, "a folder, but no checkpoint format ckptkit knows "
                                  "(use `ckptkit ls` to find checkpoints below it)")
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


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint's index safely (no code from the file runs, no tensor bytes are read)."""
    path = Path(path)
    fmt = detect_format(path)
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
            gc.enable()


def _describe_head(head: bytes) -> str:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:   # a character cut by the end of the head is still text
        text = head[: exc.start].decode("utf-8") if exc.start >= max(1, len(head) - 3) else "\x00"
    if any(ord(c) < 32 and c not in "\t\r\n" for c in text):   # NULs and control bytes: binary
        return f"unknown binary content starting {head[:8].hex(' ')}"
    first = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"a text file starting {first!r}"
