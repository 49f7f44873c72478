"""CheckpointManager: atomic, verified, asynchronous checkpoints with manifests and retention.

One call per save point, from every rank::

    with CheckpointManager(run_dir, keep_last=3) as manager:
        ...
        manager.save(state, ["periodic"])           # or ["best", "periodic"], ["final"], ["interrupt"]

What the loop pays: gathering RNG states and copying the state into reusable CPU buffers
(pinned on CUDA). A worker thread then, for each file: writes the file beside its target
through a CRC-32 counting writer (which starts the disk on each 64 MiB as soon as it is
written), fsyncs, reads it back with ``torch.load(weights_only=True, mmap=True)``, removes the
old file's manifest, renames the new file into place, writes its manifest (the commit
marker), and finally prunes old periodic checkpoints. A new save waits for the
previous write; ``close()`` (or leaving the ``with`` block) waits for the last one. Sharded
(FSDP) saves go through ``dcp.async_save`` the same way: see :mod:`ckptkit.training.sharded`.
A new manager first clears what crashed saves left in its run directory (``*.ckptkit-tmp-new-*``).

Crash at any moment: the target name holds the previous complete file or the new one; a file
without a manifest is "unconfirmed" and resume skips it; the newest confirmed checkpoint is
never touched by the write of the next one.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, cast

import torch
import torch.distributed as dist

from ckptkit.core.errors import WriteVerificationError
from ckptkit.storage.atomic import abandoned_writes, atomic_write_file
from ckptkit.storage.manifest import (
    ChecksumWriter,
    Manifest,
    ManifestFile,
    TakenManifest,
    put_back_manifest,
    take_manifest,
    write_manifest,
)
from ckptkit.training import layout
from ckptkit.training.layout import DEFAULT_LAYOUT, CheckpointLayout, TrainingState, build_checkpoint
from ckptkit.training.retention import delete_checkpoint, list_checkpoints, select_for_deletion, superseded_best
from ckptkit.training.rng import capture_rng_states_all_ranks
from ckptkit.training.snapshot import BackgroundWriter, StagingArea

# The disk starts on each 64 MiB as soon as it is serialized (see ChecksumWriter): for a 4 GB
# state the write then overlaps serialization instead of waiting for the final fsync.
WRITEBACK_EVERY = 64 << 20


def rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class CheckpointManager:
    """Saves checkpoints in ``layout`` (default run_experiment.py's) into ``run_dir``; see the module docstring."""

    def __init__(
        self,
        run_dir: Path,
        *,
        keep_last: int | None = 3,
        keep_best: bool = True,
        metric_name: str | None = None,
        metric_mode: str | None = None,
        asynchronous: bool = True,
        sharded: bool = False,
        layout: CheckpointLayout = DEFAULT_LAYOUT,
    ) -> None:
        if keep_last is not None and keep_last < 1:
            raise ValueError("keep_last must be at least 1 (or None to keep every checkpoint)")
        if sharded and layout is not DEFAULT_LAYOUT:
            raise ValueError("sharded checkpoints are written in the experiment layout only (checkpoint_step_N, "
                             f"best_model, final_model, as run_experiment.py LM names them), not {layout.name!r}")
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.layout = layout
        self.metric_name = metric_name or layout.metric_name
        self.metric_mode = metric_mode or layout.metric_mode
        self.sharded = sharded
        self.rank, self.world_size = rank_and_world_size()
        self.removed_leftovers: list[Path] = []
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.removed_leftovers = _remove_abandoned_writes(self.run_dir)
        self._staging = StagingArea()
        self._writer = BackgroundWriter(asynchronous=asynchronous)
        self._sharded_saver = None
        if sharded:
            from ckptkit.training.sharded import ShardedSaver  # torch.distributed.checkpoint is heavy

            self._sharded_saver = ShardedSaver(asynchronous=asynchronous)

    def save(self, state: TrainingState, kinds: Sequence[str]) -> list[Path]:
        """Checkpoint ``state`` under one name per kind; collective: every rank must call it.

        Returns the paths that will hold the checkpoint once written (rank 0; other ranks
        of a non-sharded run get an empty list). Raises the error of a previous failed write.
        """
        names = [self.layout.checkpoint_name(k, state, self.sharded) for k in kinds]
        targets = [(kind, self.run_dir / name) for kind, name in zip(kinds, names, strict=True)]
        rng_state = capture_rng_states_all_ranks()
        if self._sharded_saver is not None:
            self._writer.wait()   # the staging buffers and the gloo group are free again
            fields = {kind: self._manifest_fields(state, kind) for kind in kinds}
            finish = self._sharded_saver.save(targets, state, rng_state, fields, self.world_size)
            self._writer.submit(lambda: self._finish_sharded(finish))
            if not self._writer.asynchronous:
                dist.barrier()  # no rank starts the next save before this folder is committed
            return [p for _, p in targets]
        if self.rank != 0:
            return []
        self._writer.wait()
        checkpoint = build_checkpoint(state, rng_state, kinds[0], world_size=self.world_size, layout=self.layout)
        snapshot = self._staging.snapshot(checkpoint)
        fields = {kind: self._manifest_fields(state, kind) for kind in kinds}
        self._writer.submit(lambda: self._write_all(snapshot, targets, fields))
        return [p for _, p in targets]

    def wait(self) -> None:
        """Block until the save in flight is on disk with its manifest (re-raises its error)."""
        self._writer.wait()

    @property
    def busy(self) -> bool:
        """Whether a background write is still in flight."""
        return self._writer.busy

    def close(self) -> None:
        try:
            self._writer.close()
        finally:
            if self._sharded_saver is not None:
                self._sharded_saver.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _manifest_fields(self, state: TrainingState, kind: str) -> dict[str, Any]:
        metric = None
        value = self.layout.metric(state)
        if value is not None:
            metric = {"name": self.metric_name, "value": float(value), "mode": self.metric_mode}
        return {
            "kind": kind,
            "global_step": state.global_step,
            "progress": state.position.to_dict(),
            "metric": metric,
            "trainer": state.trainer,
        }

    def _write_all(self, snapshot: dict[str, Any], targets: list[tuple[str, Path]],
                   fields: dict[str, dict[str, Any]]) -> None:
        for kind, path in targets:
            snapshot[layout.CKPTKIT] = {**snapshot[layout.CKPTKIT], "kind": kind}
            (self.layout.write or write_checkpoint_file)(path, snapshot, fields[kind])
        self._prune()

    def _finish_sharded(self, finish: Callable[[], None]) -> None:
        finish()
        if self.rank == 0:
            self._prune()

    def _prune(self) -> None:
        if self.keep_last is None:
            return
        records = list_checkpoints(self.run_dir)
        # superseded_best: layouts that put the metric in the best file's name leave one file per
        # improvement (run_experiment.py's best_model.pt is replaced in place and never has two)
        for record in select_for_deletion(records, self.keep_last, self.keep_best) + superseded_best(records):
            delete_checkpoint(record.path)


def _remove_abandoned_writes(run_dir: Path) -> list[Path]:
    """A manager is the run directory's only writer: temporary files and folders there are what
    a crashed save left (the checkpoint they were to replace is intact). Returns what went."""
    removed = []
    for leftover in abandoned_writes(run_dir):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
        removed.append(leftover)
    return removed


def write_checkpoint_file(path: Path, checkpoint: dict[str, Any], manifest_fields: dict[str, Any]) -> Manifest:
    """torch.save ``checkpoint`` to ``path`` atomically, verify it, then commit it with a manifest."""
    path = Path(path)
    written: dict[str, ChecksumWriter] = {}
    old_manifest: list[TakenManifest | None] = []

    def write(f: Any) -> None:
        writer = written["w"] = ChecksumWriter(f, writeback_every=WRITEBACK_EVERY)
        # torch.save only calls write() and flush() on a file object; its annotation asks for IO[bytes].
        torch.save(checkpoint, cast(IO[bytes], writer))

    def verify(tmp: Path) -> None:
        _verify_written(path, tmp, written["w"].size, set(checkpoint))
        # The last step before the rename: until now the old file was untouched and its manifest
        # still true (a crash during the write leaves it confirmed); from the rename on, a stale
        # manifest would vouch for new bytes, so it goes first.
        old_manifest.append(take_manifest(path))

    try:
        atomic_write_file(path, write, verify=verify)
    except BaseException:
        if old_manifest:
            put_back_manifest(path, old_manifest[0])  # where the old file is still in place
        raise
    files = (ManifestFile(path.name, written["w"].size, written["w"].crc32),)
    manifest = Manifest(checkpoint=path.name, files=files, **manifest_fields)
    write_manifest(path, manifest)
    return manifest


def _verify_written(target: Path, tmp: Path, size: int, keys: set[str]) -> None:
    on_disk = tmp.stat().st_size
    if on_disk != size:
        raise WriteVerificationError(target, f"{on_disk} bytes on disk after writing {size}; the old file was kept")
    try:
        loaded = torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # any failure to load back means we must not replace the old file
        raise WriteVerificationError(
            target, f"the new file does not load back with torch.load(weights_only=True): {exc}") from exc
    found = set(loaded) if isinstance(loaded, dict) else set()
    del loaded
    if found != keys:
        raise WriteVerificationError(target, f"read back keys {sorted(found)}, wrote {sorted(keys)}; "
                                     "the old file was kept")
