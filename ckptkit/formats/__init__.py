"""All on-disk formats ckptkit reads, registered in one place, and `open_checkpoint`.

To add a format: write a module with a class implementing `ckptkit.formats.base.Format` and
append an instance to FILE_FORMATS or to the list in `folder_formats()`. Order matters only
where two sniffers could both say yes: the more specific comes first. Folder formats are
imported on first use, so commands given a single file never load them.
"""
from __future__ import annotations

import os

from ckptkit.core.checkpoint import Checkpoint
from ckptkit.core.errors import CorruptCheckpointError, MissingFileError, NotACheckpointError
from ckptkit.core.paths import named
from ckptkit.formats.base import Format
from ckptkit.formats.files import FILE_FORMATS, cyclic_gc_paused, detect_file_format, open_file, read_with

__all__ = ["FILE_FORMATS", "cyclic_gc_paused", "detect_file_format", "detect_format", "folder_formats",
           "open_checkpoint", "open_file", "read_with"]

_FOLDER_FORMATS: list[Format] = []


def folder_formats() -> list[Format]:
    """The folder formats, strongest markers first (save_pretrained's config + weights are what
    the others also contain); imported on first use."""
    if not _FOLDER_FORMATS:   # start-up: a command given one file never loads them
        from ckptkit.formats.accelerate_state import AccelerateFormat
        from ckptkit.formats.dcp import DcpFormat
        from ckptkit.formats.dcp_safetensors import DcpSafetensorsFormat
        from ckptkit.formats.hf_trainer import HFTrainerFormat
        from ckptkit.formats.safetensors_shards import SafetensorsShardsFormat
        from ckptkit.formats.save_pretrained import SavePretrainedFormat

        _FOLDER_FORMATS.extend([DcpFormat(), HFTrainerFormat(), AccelerateFormat(), SavePretrainedFormat(),
                                SafetensorsShardsFormat(), DcpSafetensorsFormat()])
    return _FOLDER_FORMATS


def detect_format(path: str | os.PathLike[str]) -> Format:
    """The format of the checkpoint at `path`, from its content; raises CkptkitError if none."""
    path = named(path)
    if not path.exists():
        raise MissingFileError(path, "no such file or folder")
    if path.is_dir():
        for fmt in folder_formats():
            if fmt.sniff(path, b""):
                return fmt
        from ckptkit.formats.dcp import unfinished_save

        unfinished = unfinished_save(path)
        if unfinished is not None:
            raise CorruptCheckpointError(path, unfinished)
        raise NotACheckpointError(path, "a folder, but no checkpoint format ckptkit knows "
                                  "(use `ckptkit ls` to find checkpoints below it)")
    return detect_file_format(path)


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint's index safely (no code from the file runs, no tensor bytes are read)."""
    path = named(path)
    return read_with(detect_format(path), path)
