"""Writing a changed tree back over a single-file checkpoint: atomically, verified, with a backup.

Only `data.pkl` is produced anew; every storage record is copied byte for byte from the file
being replaced (pread in chunks, so memory stays at one chunk). Before the new file is renamed
into place it is read back: its tree must equal the intended one and every storage record's CRC
must equal the original record's (read from the original's zip directory, or computed for legacy
files), checked against bytes read back from the new file.
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

from ckptkit.atomic import atomic_write_file
from ckptkit.checkpoint import Checkpoint, StorageRef
from ckptkit.errors import CorruptCheckpointError, UnsupportedFeatureError, WriteVerificationError
from ckptkit.formats import open_checkpoint
from ckptkit.formats.torch_zip import write_torch_zip
from ckptkit.repair.changes import first_difference

REWRITABLE = ("torch-zip", "torch-legacy")
CHUNK = 8 << 20


def check_rewritable(ckpt: Checkpoint) -> None:
    """Raise a one-line error for formats a repair cannot write back."""
    if ckpt.format == "safetensors":
        raise UnsupportedFeatureError(ckpt.path, "a safetensors file holds tensors only: it has no training "
                                      "progress or config to repair (progress lives in the trainer-state "
                                      "file beside it, e.g. training_state.pth or trainer_state.json)")
    if ckpt.format not in REWRITABLE:
        raise UnsupportedFeatureError(ckpt.path, f"repairs write torch.save files only; this is {ckpt.format}")


def rewrite_note(ckpt: Checkpoint) -> str | None:
    if ckpt.format == "torch-legacy":
        return ("the legacy (pre-zip) file is rewritten as a torch.save zip archive (torch >= 1.6 reads "
                "it the same way); the backup keeps the legacy bytes")
    return None


def rewrite_file(ckpt: Checkpoint, backup: Path | None) -> None:
    """Replace `ckpt.path` with `ckpt.tree` (already changed in memory) as a torch zip archive."""
    path = ckpt.path
    prefix = ckpt.metadata.get("zip_prefix") or path.name.split(".")[0] or "archive"
    expected = original_crcs(ckpt)

    def verify(tmp: Path) -> None:
        written = open_checkpoint(tmp)
        where = first_difference(ckpt.tree, written.tree)
        if written.format != "torch-zip" or where is not None:
            raise WriteVerificationError(path, f"the rewritten file read back differently ({where}); "
                                         "nothing was replaced")
        check_records(path, written, expected)

    atomic_write_file(path, lambda f: write_torch_zip(f, ckpt.tree, prefix, CHUNK), verify=verify,
                      backup=backup)


def tree_storages(tree: Any) -> dict[str, StorageRef]:
    """Every storage a tree refers to (tensors inside pickled objects included), by key."""
    from ckptkit.pickle_writer import TreePickler

    pickler = TreePickler()
    pickler.dumps(tree)
    return pickler.storages


def original_crcs(ckpt: Checkpoint) -> dict[str, int]:
    """The CRC32 of every storage record the tree refers to, as the original file holds it."""
    storages = tree_storages(ckpt.tree)
    prefix = ckpt.metadata.get("zip_prefix")
    if ckpt.format == "torch-zip" and prefix is not None:
        with zipfile.ZipFile(ckpt.path) as zf:
            return {key: zf.getinfo(f"{prefix}/data/{key}").CRC for key in storages}
    return {key: record_crc(s) for key, s in storages.items()}


def record_crc(storage: StorageRef) -> int:
    crc = 0
    for chunk in storage.iter_chunks(CHUNK):
        crc = zlib.crc32(chunk, crc)
    return crc


def check_records(original: Path, written: Checkpoint, expected: dict[str, int]) -> None:
    """Every record of the `written` archive holds the bytes of the original's record of that key."""
    prefix = written.metadata.get("zip_prefix", "archive")
    storages = tree_storages(written.tree)
    if set(storages) != set(expected):
        raise WriteVerificationError(original, "the rewritten file refers to other storage records than "
                                     "the original; nothing was replaced")
    with zipfile.ZipFile(written.path) as zf:
        stored = {key: zf.getinfo(f"{prefix}/data/{key}").CRC for key in storages}
    for key, storage in storages.items():
        if stored[key] != expected[key]:
            # The writer computed this CRC from the bytes it read from the original.
            raise CorruptCheckpointError(original, f"storage record data/{key} does not match its CRC in the "
                                         "original file (the original is damaged; run ckptkit validate "
                                         "--deep); nothing was replaced")
        if record_crc(storage) != expected[key]:
            raise WriteVerificationError(original, f"storage record data/{key} read back with other bytes "
                                         "than were written (disk or filesystem fault); nothing was replaced")
