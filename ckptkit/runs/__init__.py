"""A run directory as a whole: every checkpoint below it, ordered by training progress.

`scan_run(dir)` finds checkpoints whatever their format (files sniffed by content, folders by
their marker files), reads each one's index, orders them by `Progress.sort_key()` (never by
modification time or name), gives each a quick health status, marks latest / best / final, and
points out the traps users of these training systems fell into (run-level findings, codes `run.*`). `pick_resume`
chooses what `ckptkit latest` prints: the most advanced checkpoint that is whole and consistent.
Nothing here imports torch.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

from ckptkit.core.checkpoint import Checkpoint, Finding, Progress, Severity
from ckptkit.core.errors import CkptkitError, MissingFileError, NotACheckpointError
from ckptkit.core.paths import named
from ckptkit.families import leftover_copy
from ckptkit.formats import FILE_FORMATS, folder_formats, open_checkpoint
from ckptkit.formats.base import HEAD_BYTES
from ckptkit.runs.entries import (
    BEST_NAME,
    FINAL_NAME,
    HF_CHECKPOINT,
    HF_TEMP,
    RECENT_NAME,
    Health,
    Run,
    RunEntry,
    refused,
    run_folder,
)
from ckptkit.runs.traps import TRAPS, compares_siblings
from ckptkit.storage.atomic import TEMP_MARKER, is_backup
from ckptkit.storage.manifest import manifest_problems, read_manifest
from ckptkit.validation import ValidationReport, validate_checkpoint

# Unrecognised files with these endings are shown as broken rows; other files are not checkpoints.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".pkl", ".tar", ".distcp", ".final")
# Unrecognised folders holding one of these are partial checkpoints, shown as broken rows.
PARTIAL_MARKERS = ("trainer_state.json", "training_state.pth", "adapter_config.json", "optimizer.pt")
SKIP_DIRS = frozenset({".git", "__pycache__", ".hg", ".svn", "node_modules", ".venv"})

# The run model lives in runs/entries.py (the traps read it too); it is part of this package's API.
__all__ = ["BEST_NAME", "FINAL_NAME", "HF_CHECKPOINT", "HF_TEMP", "RECENT_NAME", "Health", "Run", "RunEntry",
           "entry_of", "find_checkpoints", "is_whole", "pick_resume", "quick_health", "refused", "run_findings_for",
           "run_folder", "scan_run"]


def scan_run(root: str | os.PathLike[str], known: dict[Path, RunEntry] | None = None) -> Run:
    """Every checkpoint below `root`, read (index only), health-checked and ordered by progress.

    Each checkpoint is opened once; `known` (by path): entries already made from a checkpoint
    the caller opened, which are taken as they are instead of being read again.
    """
    root = named(root)
    if not root.exists():
        raise MissingFileError(root, "no such file or folder")
    known = known or {}
    entries = [known[path] if path in known else _entry(root, path, is_folder)
               for path, is_folder in find_checkpoints(root)]
    return _ordered_run(root, entries)


def _ordered_run(root: Path, entries: list[RunEntry]) -> Run:
    entries.sort(key=lambda e: (e.progress.sort_key(), e.relative))
    run = Run(root, entries)
    _mark(run)
    _run_findings(run)
    return run


def find_checkpoints(root: Path) -> list[tuple[Path, bool]]:
    """(path, is_folder) of every checkpoint-like thing below `root`; recognised folders are not
    entered for files (their files are members), only for further checkpoint folders."""
    if root.is_file():
        return [(root, False)]
    found: list[tuple[Path, bool]] = []
    _walk(root, found, is_root=True)
    return found


def _walk(directory: Path, found: list[tuple[Path, bool]], is_root: bool = False) -> None:
    recognised = _recognised_folder(directory)
    partial = not recognised and _has_partial_markers(directory)
    if recognised or partial:
        found.append((directory, True))
    before = len(found)
    try:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    hub_cache = {"blobs", "refs", "snapshots"} <= {e.name for e in entries if e.is_dir(follow_symlinks=False)}
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            # A Hugging Face hub cache's blobs are its snapshots' files again, under hashes.
            if entry.name not in SKIP_DIRS and not (hub_cache and entry.name == "blobs"):
                _walk(path, found)
        elif not (recognised or partial) and entry.is_file() and _is_checkpoint_file(path):
            found.append((path, False))
    # A folder named like a checkpoint that holds nothing readable is a failed save, not a directory.
    if not (recognised or partial or is_root) and len(found) == before and _named_like_checkpoint(directory.name):
        found.append((directory, True))


def _recognised_folder(path: Path) -> bool:
    return any(fmt.sniff(path, b"") for fmt in folder_formats())


def _has_partial_markers(path: Path) -> bool:
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return any(n in PARTIAL_MARKERS or n.endswith(".distcp") for n in names)


def _named_like_checkpoint(name: str) -> bool:
    return bool(HF_CHECKPOINT.match(name) or HF_TEMP.match(name) or TEMP_MARKER in name
                or (RECENT_NAME.search(name) and "checkpoint" in name.lower()))


def _is_checkpoint_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError:
        return path.name.endswith(CHECKPOINT_SUFFIXES)
    if head and any(fmt.sniff(path, head) for fmt in FILE_FORMATS):
        return True
    return path.name.endswith(CHECKPOINT_SUFFIXES) or TEMP_MARKER in path.name


def _entry(root: Path, path: Path, is_folder: bool) -> RunEntry:
    try:
        ckpt = open_checkpoint(path)
    except CkptkitError as exc:
        return RunEntry(path, _relative(root, path, is_folder), is_folder, None, None, Progress(),
                        _disk_size(path), Health("broken", _unreadable_reason(exc, path)), _is_temporary(path),
                        backup=_is_backup(path))
    return entry_of(root, ckpt, quick_health(ckpt))


def _relative(root: Path, path: Path, is_folder: bool) -> str:
    return path.name if path == root and not is_folder else "." if path == root else str(path.relative_to(root))


def _is_temporary(path: Path) -> bool:
    """ckptkit's and HF Trainer's unfinished saves, and a training system's own temporary copies."""
    leftover = leftover_copy(path.name)
    return (TEMP_MARKER in path.name or bool(HF_TEMP.match(path.name))
            or (leftover is not None and leftover[0] == "temporary"))


def _is_backup(path: Path) -> bool:
    """A repair's backup, or a training system's own backup copy (EnStack's .backup_*)."""
    leftover = leftover_copy(path.name)
    return is_backup(path) or (leftover is not None and leftover[0] == "backup")


def entry_of(root: Path, ckpt: Checkpoint, health: Health) -> RunEntry:
    """The run entry of an opened checkpoint whose index-only health is known."""
    path, is_folder = ckpt.path, ckpt.path.is_dir()
    relative, temporary = _relative(root, path, is_folder), _is_temporary(path)
    if temporary:
        health = Health("broken", "temporary: left by a save that did not finish (never renamed into place)",
                        health.errors, health.warnings, health.codes)
    best = ckpt.extra.get("best_model_checkpoint") if ckpt.format == "hf-trainer" else None
    return RunEntry(path, relative, is_folder, ckpt.format, ckpt.family, ckpt.progress, ckpt.size_bytes,
                    health, temporary, best_reference=str(best) if best else None, backup=_is_backup(path))


def quick_health(ckpt: Checkpoint, report: ValidationReport | None = None) -> Health:
    """ok / warnings / broken from the checkpoint's own (non-deep, no siblings) validation;
    `report`: that validation already made (with or without --deep), not run again."""
    report = report or validate_checkpoint(ckpt)
    findings = report.index_only_findings()
    errors = [f for f in findings if f.severity is Severity.ERROR]
    warnings = [f for f in findings if f.severity is Severity.WARNING]
    codes = sorted({f.code for f in errors + warnings})
    if errors:
        return Health("broken", _one_line(errors[0]), len(errors), len(warnings), codes)
    if warnings:
        return Health("warnings", _one_line(warnings[0]), 0, len(warnings), codes)
    return Health("ok", None, 0, 0, codes)


def _one_line(finding: Finding) -> str:
    return f"{finding.code}: {finding.message}"


def _unreadable_reason(exc: CkptkitError, path: Path) -> str:
    if isinstance(exc, NotACheckpointError) and path.is_dir():
        return "not a checkpoint folder ckptkit knows (no trainer_state.json, .metadata, weights + config...)"
    return exc.message


def _disk_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def is_whole(entry: RunEntry) -> bool:
    """Safe to resume from: read, no error findings, not a leftover temporary nor a repair's
    backup, progress known."""
    return entry.health.status != "broken" and not entry.temporary and not entry.backup and entry.progress.known


def pick_resume(entries: list[RunEntry]) -> RunEntry | None:
    """The most advanced whole and consistent checkpoint (entries are ordered by progress); at
    equal progress, one without warnings before one with (a weights-only copy, a missing
    optimizer: `completeness.*`), then the one named as the newest (timm's last.pth.tar before
    its copy model_best.pth.tar).

    The one picked is also checked against its ckptkit manifest's CRC-32s, as the resume will
    check it (`ls` itself only compares sizes): a file rolled back to an older copy of the same
    size (a sync client's restore) is marked broken and the next one back is taken instead.
    """
    whole = sorted((e for e in entries if is_whole(e) and not refused(e)),
                   key=lambda e: (e.progress.sort_key(), e.health.status == "ok", -e.health.warnings,
                                  bool(RECENT_NAME.search(e.path.name))))
    for entry in reversed(whole):
        problems = _manifest_crc_problems(entry.path)
        if not problems:
            return entry
        entry.health = Health("broken", f"integrity.manifest-mismatch: {problems[0]}; a resume refuses it",
                              entry.health.errors + 1, entry.health.warnings,
                              sorted({*entry.health.codes, "integrity.manifest-mismatch"}))
    return None


def _manifest_crc_problems(path: Path) -> list[str]:
    try:
        manifest = read_manifest(path)
    except CkptkitError:
        return []   # an unreadable manifest is already a finding of the entry's validation
    return manifest_problems(path, manifest) if manifest is not None else []


def _most_advanced(entries: list[RunEntry]) -> list[RunEntry]:
    known = [e for e in entries if e.progress.known and not e.temporary and not e.backup]
    if not known:
        return []
    top = known[-1].progress.sort_key()
    return [e for e in known if e.progress.sort_key() == top]


def _mark(run: Run) -> None:
    best_folders = _hf_best_folders(run.entries)
    runs = run.runs()
    picks: list[RunEntry] = []
    for folder, entries in run.groups().items():    # within each run: counters of two runs do not compare
        pick = pick_resume(entries) if folder in runs else None
        tied = _most_advanced(entries)
        if tied:
            # One `latest` among checkpoints at the same progress (best_model.pt and
            # checkpoint_step_20.pt of one save): the one a resume takes when it is among them.
            (pick if pick in tied else tied[-1]).markers.append("latest")
        if pick is not None:
            picks.append(pick)
    if len(runs) == 1 and picks:
        run.resume = picks[0]
    for entry in run.entries:
        if entry.backup:
            entry.markers.append("backup")
        if entry.temporary or entry.backup:   # none of these, whatever name it borrows
            continue
        if BEST_NAME.search(entry.path.name) or entry.path in best_folders:
            entry.markers.append("best")
        if entry.progress.training_finished or FINAL_NAME.search(entry.path.name):
            entry.markers.append("final")
    for pick in picks:
        pick.markers.append("resume")


def _hf_best_folders(entries: list[RunEntry]) -> set[Path]:
    """HF Trainer names its best checkpoint in trainer_state.json; the newest state of each
    output folder knows the final answer. The stored path is relative to wherever training
    ran, so it is matched by folder name among the siblings."""
    newest: dict[Path, RunEntry] = {}
    for entry in entries:          # ordered by progress: later ones overwrite
        if entry.best_reference:
            newest[entry.path.parent] = entry
    return {parent / Path(e.best_reference).name for parent, e in newest.items() if e.best_reference}


def _run_findings(run: Run) -> None:

    for trap in TRAPS:
        for subjects, finding in trap(run):
            run.findings.append(finding)
            run.subjects.append(subjects)


def run_findings_for(path: str | os.PathLike[str], ckpt: Checkpoint | None = None,
                     report: ValidationReport | None = None) -> list[Finding]:
    """Run-level findings about the checkpoint at `path`, from the directory it lies in.

    `ckpt` and `report`: the checkpoint at `path` already opened and validated (the validate
    verb's); it is not read again. Its siblings are read (each once, index only) only when a
    trap compares it with them (`traps.compares_siblings`); otherwise no other file is opened.
    For a run directory itself (not a checkpoint), all of its run-level findings.
    """
    path = named(path)
    if not path.exists():
        return []
    is_checkpoint = path.is_file() or _recognised_folder(path)
    if not is_checkpoint:
        return list(scan_run(path).findings)
    if ckpt is None:
        try:
            ckpt = open_checkpoint(path)
        except CkptkitError:
            return list(_about(scan_run(path.parent), path))

    alone = entry_of(path.parent, ckpt, quick_health(ckpt, report))
    run = _ordered_run(path.parent, [alone])            # the traps about it that need no sibling
    if not compares_siblings(alone):
        return list(_about(run, path))
    return list(_about(scan_run(path.parent, {path: _unmarked(alone)}), path))


def _unmarked(entry: RunEntry) -> RunEntry:
    return dataclasses.replace(entry, markers=[])


def _about(run: Run, path: Path) -> Iterator[Finding]:
    target = path.resolve()
    return (f for f, subjects in zip(run.findings, run.subjects, strict=True)
            if any(s.resolve() == target for s in subjects))
