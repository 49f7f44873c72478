"""Keeping a ckptkit completion manifest true when a repair rewrites what it vouches for.

Checkpoints written by ckptkit's trainers carry ``<checkpoint>.manifest.json`` (sizes, CRC-32s,
progress; see :mod:`ckptkit.storage.manifest`), and a resume refuses a checkpoint whose bytes disagree
with it. A repair that rewrote such a checkpoint and left the manifest as it was would turn a
fixed checkpoint into one ckptkit itself refuses to resume. So, around the rewrite of a file
that a manifest covers (the checkpoint file itself, or a member of a checkpoint folder):

* the old manifest is removed just before the new bytes are renamed into place (a stale
  manifest must never vouch for new bytes), and put back if the write fails;
* after the rename a new manifest is written: the rewritten file's size and CRC-32, the other
  files' entries unchanged, and the progress (``global_step``, ``data_position``) as the new
  tree records it, so that retention and ``ls`` order the run by the repaired progress.

A crash between the two leaves the checkpoint without a manifest: unconfirmed, so a resume
from the run directory passes over it (and says so) rather than trusting it. The backup gets
no manifest: it is a copy to restore by hand, never a candidate for resuming.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from ckptkit.storage import crc
from ckptkit.storage.manifest import (
    Manifest,
    ManifestFile,
    TakenManifest,
    manifest_path,
    put_back_manifest,
    read_manifest,
    take_manifest,
    write_manifest,
)


class ManifestRefresh:
    """The manifest covering one file a repair rewrites: take it, put it back, or renew it."""

    def __init__(self, owner: Path, member: Path, manifest: Manifest) -> None:
        self.owner, self.member, self.manifest = owner, member, manifest
        self._taken: TakenManifest | None = None

    @classmethod
    def covering(cls, path: Path) -> ManifestRefresh | None:
        """The manifest of `path` itself, or of the checkpoint folder `path` belongs to; None
        when no manifest covers it (every checkpoint not written by ckptkit's trainers)."""
        path = Path(os.path.abspath(path))      # a manifest names its files from its own folder
        for owner in (path, path.parent):
            if manifest_path(owner).is_file():
                manifest = read_manifest(owner)
                if manifest is not None and _entry_name(owner, path) in {f.path for f in manifest.files}:
                    return cls(owner, path, manifest)
        return None

    def take(self) -> None:
        """Remove the manifest: the bytes it vouches for are about to be replaced."""
        self._taken = take_manifest(self.owner, watched=self.member)

    def put_back(self) -> None:
        """The rewrite failed: where the old bytes stayed in place, so does their manifest."""
        put_back_manifest(self.owner, self._taken)
        self._taken = None

    def renew(self, tree: Any) -> Manifest:
        """Write the manifest of the rewritten checkpoint (after the rename)."""
        name = _entry_name(self.owner, self.member)
        rewritten = ManifestFile(name, self.member.stat().st_size, crc.file_crc32(self.member))
        files = tuple(rewritten if f.path == name else f for f in self.manifest.files)
        renewed = replace(self.manifest, files=files, **_progress_fields(tree, self.manifest))
        write_manifest(self.owner, renewed)
        return renewed


def _entry_name(owner: Path, member: Path) -> str:
    """How a manifest beside `owner` names `member` (paths relative to the manifest's folder)."""
    return member.relative_to(owner.parent).as_posix()


def _progress_fields(tree: Any, old: Manifest) -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {}
    out: dict[str, Any] = {}
    step = tree.get("global_step")
    if isinstance(step, int) and not isinstance(step, bool):
        out["global_step"] = step
    position = tree.get("data_position")
    if isinstance(position, dict):
        progress = dict(old.progress)
        progress.update({k: v for k, v in position.items() if isinstance(v, int) and not isinstance(v, bool)})
        out["progress"] = progress
    return out
