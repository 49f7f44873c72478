"""`ckptkit plot RUN_DIR|PATH`: the histories checkpoints carry, as series against step or epoch.

Each checkpoint's family puts its histories in `Checkpoint.histories` (run_experiment.py LM's
`train_history`/`val_history`, the retrieval files' `train_losses`/`val_recalls`, an HF Trainer
folder's `log_history`, the bundled trainers' records); this module turns them into series.
A list of dicts gives one series per numeric field against its `step` (else `epoch`); a list of
numbers is one value per epoch. Per run (the folder its checkpoints lie in) the most advanced
readable checkpoint's history is used and older ones fill the steps it lacks. Every checkpoint
on disk becomes a marker (latest, best, broken); a resume is marked where the histories show
one. No matplotlib here: `ckptkit.plotting.png` draws, and only the `plot` command imports it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Checkpoint
from ckptkit.core.errors import CkptkitError
from ckptkit.formats import open_checkpoint
from ckptkit.plotting.histories import Series, resumes_between, series_of
from ckptkit.runs import RunEntry, is_whole, scan_run

# A broken checkpoint has no readable counters; its name often still says where it was.
_STEP_IN_NAME = re.compile(r"(?:step|checkpoint|iter)[-_=]?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Marker:
    """One checkpoint on disk, placed at its progress."""

    run: str
    path: str                    # relative to the run directory given
    step: float | None           # global step (or epochs completed, for epoch-only runs)
    epoch: float | None
    kind: str                    # how it is drawn: "broken" > "best" > "latest" > "checkpoint"
    note: str | None = None      # why it is broken, or where its position came from
    markers: tuple[str, ...] = ()   # everything `ckptkit ls` marks it as ("latest", "best", "resume")

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "path": self.path, "step": self.step, "epoch": self.epoch,
                "kind": self.kind, "markers": list(self.markers), "note": self.note}


@dataclass(frozen=True)
class ResumeMark:
    run: str
    step: float
    axis: str
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "at": self.step, "axis": self.axis, "why": self.why}


@dataclass
class PlotData:
    root: Path
    series: list[Series] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    resumes: list[ResumeMark] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def runs(self) -> list[str]:
        return sorted({s.run for s in self.series} | {m.run for m in self.markers})

    def to_json(self) -> dict[str, Any]:
        return {"root": str(self.root), "runs": self.runs, "series": [s.to_json() for s in self.series],
                "checkpoints": [m.to_json() for m in self.markers],
                "resumes": [r.to_json() for r in self.resumes], "notes": list(self.notes)}


def collect_series(path: str | os.PathLike[str]) -> PlotData:
    """Every history below `path` (a run directory or one checkpoint), one line per run."""
    root = Path(path)
    run = scan_run(root)
    data = PlotData(root)
    groups: dict[str, list[RunEntry]] = {}
    for entry in run.entries:                       # ordered by progress, least advanced first
        groups.setdefault(_run_name(root, entry), []).append(entry)
    for name, entries in groups.items():
        _one_run(data, name, entries)
    if not data.series:
        data.notes.append("no checkpoint below it carries a history (a loss or metric per step or epoch)")
    return data


def _run_name(root: Path, entry: RunEntry) -> str:
    parent = entry.path.parent
    if root.is_file() or parent == root.parent:
        return root.name if root.is_dir() else root.parent.name or "."
    return str(parent.relative_to(root)) if parent != root else root.name


def _one_run(data: PlotData, run: str, entries: list[RunEntry]) -> None:
    read: list[tuple[RunEntry, Checkpoint]] = []
    for entry in entries:
        data.markers.append(_marker(run, entry))
        if entry.health.status == "broken" or entry.temporary or entry.backup:
            continue
        try:
            read.append((entry, open_checkpoint(entry.path)))
        except CkptkitError:
            continue
    merged: dict[str, Series] = {}
    for entry, ckpt in reversed(read):              # newest first; older ones fill gaps only
        for s in series_of(ckpt, run, _shown(entry)):
            if s.metric not in merged:
                merged[s.metric] = s
            else:
                merged[s.metric].fill_from(s)
    newest = {s.metric: s for s in series_of(read[-1][1], run, _shown(read[-1][0]))} if read else {}
    for entry, ckpt in read[:-1]:
        for at, axis, why in resumes_between(newest, series_of(ckpt, run, _shown(entry))):
            data.resumes.append(ResumeMark(run, at, axis, why))
    for metric in sorted(merged):
        data.resumes.extend(ResumeMark(run, at, merged[metric].axis, why) for at, why in merged[metric].restarts())
    data.resumes.extend(_crash_resumes(run, entries))
    data.series.extend(merged[m] for m in sorted(merged))
    data.resumes = list(dict.fromkeys(data.resumes))


# A save a crash cut short: left as a temporary, or renamed into place without its manifest.
_CUT_SHORT = "completeness.unconfirmed"


def _crash_resumes(run: str, entries: list[RunEntry]) -> list[ResumeMark]:
    """A save cut short by a crash, with later checkpoints after it: the run was resumed from the
    most advanced whole checkpoint at or before that save (a resume that continued exactly
    leaves no trace in the histories, but it does on disk)."""
    marks = []
    for i, cut in enumerate(entries):
        if not (cut.temporary or _CUT_SHORT in cut.health.codes):
            continue
        later = [e for e in entries[i + 1:] if is_whole(e) and e.progress.sort_key() > cut.progress.sort_key()]
        cut_at = _marker(run, cut).step
        before = [e for e in entries[: i + 1] if is_whole(e) and e.progress.global_step is not None
                  and (cut_at is None or e.progress.global_step <= cut_at)]
        if later and before:
            base = before[-1]
            how = ("is a temporary left by a save that never finished" if cut.temporary else
                   "was never confirmed (no manifest: the process died while saving it)")
            marks.append(ResumeMark(run, float(base.progress.global_step or 0), "step",
                                    f"{cut.relative} {how}, and later checkpoints exist: the run "
                                    f"resumed from {base.relative}"))
    return marks


def _shown(entry: RunEntry) -> str:
    return entry.path.name if entry.relative == "." else entry.relative


def _marker(run: str, entry: RunEntry) -> Marker:
    p = entry.progress
    kind = ("broken" if entry.health.status == "broken" or entry.temporary else
            "best" if "best" in entry.markers else "latest" if "latest" in entry.markers else "checkpoint")
    step: float | None = p.global_step
    epoch: float | None = p.epoch_float if p.epoch_float is not None else p.epochs_completed
    note = entry.health.reason if kind == "broken" else None
    if step is None and epoch is None:
        found = _STEP_IN_NAME.search(entry.path.name)
        if found:
            step = int(found.group(1))
            note = f"{note or 'counters unknown'}; placed at step {step} from its name"
    return Marker(run, _shown(entry), step, epoch, kind, note, tuple(entry.markers))
