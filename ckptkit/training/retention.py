"""The checkpoints of a run directory, ordered by training progress, and which ones to prune.

Progress comes from each checkpoint's manifest (global step, then batches consumed), never
from modification times or names: a copied, restored or re-synced file (EnStack's rolled-back
Google Drive checkpoint) has a new mtime but old progress, and ``checkpoint_step_500.pt``
sorts after ``checkpoint_step_1000.pt`` by name.
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.storage.atomic import fsync_dir, is_temporary
from ckptkit.storage.manifest import MANIFEST_SUFFIX, Manifest, manifest_path, read_manifest
from ckptkit.training.layout import LAYOUTS

_PRUNABLE_KINDS = ("periodic", "interrupt")
# Equal progress (best_model.pt saved at the same step as checkpoint_step_N.pt): prefer the
# file whose name says what it is in the run's timeline.
_KIND_RANK = {"best": 0, "periodic": 1, "interrupt": 2, "final": 3}


@dataclass(frozen=True)
class CheckpointRecord:
    path: Path
    manifest: Manifest

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def progress_key(self) -> tuple[int, int, int]:
        progress = self.manifest.progress
        step = self.manifest.global_step if self.manifest.global_step is not None else -1
        consumed = int(progress.get("epoch", 0)) * int(progress.get("steps_per_epoch", 0)) + int(
            progress.get("batch_in_epoch", 0)
        )
        return (int(step), consumed, _KIND_RANK.get(self.kind, 0))

    @property
    def metric_value(self) -> float | None:
        metric = self.manifest.metric
        if not metric or metric.get("value") is None or not math.isfinite(float(metric["value"])):
            return None
        value = float(metric["value"])
        return -value if metric.get("mode", "min") == "max" else value  # lower is better


def list_checkpoints(run_dir: Path) -> list[CheckpointRecord]:
    """Checkpoints in ``run_dir`` that have a manifest and whose files exist, oldest first."""
    records = []
    for entry in sorted(Path(run_dir).iterdir()):
        if not entry.name.endswith(MANIFEST_SUFFIX) or is_temporary(entry):
            continue
        checkpoint = entry.with_name(entry.name[: -len(MANIFEST_SUFFIX)])
        try:
            manifest = read_manifest(checkpoint)
        except CorruptCheckpointError:
            continue
        if manifest is not None and os.path.exists(checkpoint):
            records.append(CheckpointRecord(checkpoint, manifest))
    return sorted(records, key=lambda r: r.progress_key)


def unconfirmed_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint-looking entries without a manifest: interrupted saves or foreign files."""
    run_dir = Path(run_dir)
    confirmed = {r.path.name for r in list_checkpoints(run_dir)}
    return sorted(
        p for p in run_dir.iterdir()
        if not p.name.endswith(MANIFEST_SUFFIX) and p.name not in confirmed
        and (p.suffix == ".pt" or p.is_dir() or is_temporary(p) or _named_by_a_layout(p.name))
    )


def _named_by_a_layout(name: str) -> bool:
    """LlamaRec retriever's ``checkpoint-recent.pth(.final)`` and ``best_acc_model.pth`` do not end in .pt."""
    return any(layout.owns_name(name) for layout in LAYOUTS.values())


def select_for_deletion(records: list[CheckpointRecord], keep_last: int,
                        keep_best: bool = True) -> list[CheckpointRecord]:
    """The periodic checkpoints retention may delete: all but the ``keep_last`` most advanced,
    the best by metric, and the newest of the whole run (which no rule may ever delete)."""
    if keep_last < 1:
        raise ValueError("keep_last must be at least 1: the newest checkpoint is never deleted")
    ordered = sorted(records, key=lambda r: r.progress_key)
    prunable = [r for r in ordered if r.kind in _PRUNABLE_KINDS]
    keep = {r.path for r in prunable[-keep_last:]}
    if ordered:
        keep.add(ordered[-1].path)
    if keep_best:
        scored = [r for r in prunable if r.metric_value is not None]
        if scored:
            # min() keeps the first of equal values; prefer the most advanced of equally good ones
            keep.add(min(reversed(scored), key=lambda r: r.metric_value).path)  # type: ignore[arg-type, return-value]
    return [r for r in prunable if r.path not in keep]


def superseded_best(records: list[CheckpointRecord]) -> list[CheckpointRecord]:
    """Best checkpoints older than the newest best: a later save found a better one."""
    bests = sorted((r for r in records if r.kind == "best"), key=lambda r: r.progress_key)
    return bests[:-1]


def delete_checkpoint(path: Path) -> None:
    """Manifest first: a crash midway leaves an unconfirmed file, never a confirmed missing one."""
    path = Path(path)
    try:
        os.unlink(manifest_path(path))
    except FileNotFoundError:
        pass
    fsync_dir(path.parent)
    if path.is_dir():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
    fsync_dir(path.parent)
