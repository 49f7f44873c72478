"""A ckptkit completion manifest against the bytes it vouches for.

Checkpoints written by ckptkit's trainers carry ``<checkpoint>.manifest.json`` (sizes and CRC-32s
of every file, written last; see :mod:`ckptkit.storage.manifest`), and a resume refuses a checkpoint the
manifest disagrees with. So does ``validate``, in the same words: without ``--deep`` by the sizes
(no tensor byte is read), with ``--deep`` by the CRC-32s too. A checkpoint that says ckptkit's
trainer wrote it but has no manifest was never confirmed complete. Other checkpoints have no
manifest and get no finding here.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ckptkit.core.checkpoint import Finding, Severity
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.storage.atomic import is_temporary
from ckptkit.storage.manifest import manifest_path, manifest_problems, read_manifest

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext


def check_manifest(ctx: ValidationContext) -> Iterable[Finding]:
    path = ctx.ckpt.path
    if is_temporary(path):
        return
    try:
        manifest = read_manifest(path)
    except CorruptCheckpointError as exc:
        yield Finding("integrity.manifest-unreadable", Severity.ERROR, ctx.where(),
                      f"{manifest_path(path).name}: {exc.message}; nothing confirms this checkpoint is whole, "
                      "and a resume refuses it")
        return
    if manifest is None:
        if _written_by_ckptkit_trainer(ctx) and not _member_of_confirmed_folder(path):
            yield Finding("completeness.unconfirmed", Severity.WARNING, ctx.where(),
                          f"written by ckptkit's trainer but no {manifest_path(path).name} beside it: its save "
                          "(or a repair of it) never confirmed it complete; a resume from the run directory "
                          "passes over it")
        return
    for problem in manifest_problems(path, manifest, checksums=ctx.deep):
        yield Finding("integrity.manifest-mismatch", Severity.ERROR, ctx.where(),
                      f"does not match {manifest_path(path).name}: {problem}; a resume refuses it")


def _member_of_confirmed_folder(path: Path) -> bool:
    """A training_state.pth inside a checkpoint folder is vouched for by the folder's manifest, which
    `validate` of the folder checks: the file and its folder get the same verdict."""
    try:
        return path.is_file() and read_manifest(path.parent) is not None
    except CorruptCheckpointError:
        return False


def _written_by_ckptkit_trainer(ctx: ValidationContext) -> bool:
    marker = ctx.ckpt.extra.get("ckptkit")
    return isinstance(marker, dict) and isinstance(marker.get("trainer"), str)
