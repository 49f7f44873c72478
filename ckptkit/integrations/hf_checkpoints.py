"""The checkpoint-N/ folders of a Hugging Face Trainer run, the ckptkit way: which one to resume
(verified), the commit marker each save gets, and a rotation that never deletes the newest
verified folder nor the best.

No transformers import here (see :mod:`ckptkit.integrations.hf` for the callback): these work on
folders, with ckptkit's own readers and validation.

Why not Trainer's own rules: ``resume_from_checkpoint=True`` takes the highest step number
without opening the folder (a half-written or damaged newest folder is loaded, or crashes the
load), and ``save_total_limit`` rotation runs inside the save, before anything checked that the
folder it just wrote is whole, so with a small limit the last good folder can be deleted first.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Severity
from ckptkit.core.errors import CkptkitError, MissingFileError, ResumeRefusedError
from ckptkit.formats import open_checkpoint
from ckptkit.formats.hf_trainer import EXACT_RESUME_STATE
from ckptkit.runs import is_whole, scan_run
from ckptkit.storage.atomic import atomic_write_file
from ckptkit.storage.manifest import (
    Manifest,
    describe_files,
    manifest_path,
    manifest_problems,
    read_manifest,
    write_manifest,
)
from ckptkit.training.retention import delete_checkpoint
from ckptkit.validation import validate_checkpoint

CHECKPOINT_FOLDER = re.compile(r"checkpoint-(\d+)$")
STATE_FORMAT = "ckptkit-hf-resume"
STATE_VERSION = 1


@dataclass
class ResumePick:
    """The checkpoint folder to resume from (None: start fresh) and why newer ones were passed over."""

    path: Path | None
    passed_over: list[str] = field(default_factory=list)   # "checkpoint-12: <reason>", newest first
    warnings: list[str] = field(default_factory=list)      # about the pick itself


def pick_checkpoint(target: str | os.PathLike[str]) -> ResumePick:
    """A run's output_dir -> its newest whole, verified checkpoint-N/ folder; a checkpoint folder ->
    itself, verified. Raises ResumeRefusedError when a folder given by name (or every folder of a
    run) fails; an output_dir with no checkpoint at all is a fresh start (path None)."""
    target = Path(target)
    if not target.exists():
        raise MissingFileError(target, "no such checkpoint folder or output_dir")
    if CHECKPOINT_FOLDER.match(target.name) and target.is_dir():
        return ResumePick(target, [], verify_checkpoint(target))
    run = scan_run(target)
    # By the step in the name, as Trainer saves them: a folder whose trainer_state.json never got
    # written has no progress to sort by, yet it is the newest and must be named as passed over.
    folders = sorted((e for e in run.entries if e.is_folder and CHECKPOINT_FOLDER.match(e.path.name)),
                     key=lambda e: int(CHECKPOINT_FOLDER.match(e.path.name).group(1)))  # type: ignore[union-attr]
    if not folders:
        return ResumePick(None)
    passed_over: list[str] = []
    for entry in reversed(folders):
        if not is_whole(entry):
            passed_over.append(f"{entry.relative}: {entry.health.reason or 'progress unknown'}")
            continue
        try:
            return ResumePick(entry.path, passed_over, verify_checkpoint(entry.path, in_run=True))
        except CkptkitError as exc:
            passed_over.append(f"{entry.relative}: {exc.message}")
    raise ResumeRefusedError(target, "no whole, verified checkpoint-N folder to resume from ("
                             + "; ".join(passed_over) + f"); see `ckptkit ls {target}`")


def verify_checkpoint(folder: Path, *, in_run: bool = False) -> list[str]:
    """Refuse a folder its manifest disagrees with (sizes and CRC-32s) or that `ckptkit validate`
    finds errors in; returns warnings. A folder written with ExactResume but never confirmed (no
    manifest: the process died inside the save) is refused within a run, where an older one is
    at hand, and only warned about when named by the user."""
    warnings: list[str] = []
    manifest = read_manifest_or_refuse(folder)
    if manifest is not None:
        if problems := manifest_problems(folder, manifest):
            raise ResumeRefusedError(folder, f"does not match {manifest_path(folder).name}: {problems[0]}")
    elif (folder / EXACT_RESUME_STATE).exists():
        message = f"no {manifest_path(folder).name}: its save never finished"
        if in_run:
            raise ResumeRefusedError(folder, message)
        warnings.append(message)
    else:
        warnings.append("written without ckptkit's ExactResume callback: Trainer's own resume, not exact")
    report = validate_checkpoint(open_checkpoint(folder), siblings=False)
    errors = [f for f in report.findings if f.severity is Severity.ERROR]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ResumeRefusedError(folder, f"validation found errors: {errors[0].code}: {errors[0].message}{more}; "
                                 f"see `ckptkit validate {folder}`")
    warnings += [f"{f.code}: {f.message}" for f in report.findings
                 if f.severity is Severity.WARNING and f.code != "completeness.unconfirmed"]
    return warnings


def read_manifest_or_refuse(folder: Path) -> Manifest | None:
    try:
        return read_manifest(folder)
    except CkptkitError as exc:
        raise ResumeRefusedError(folder, exc.message) from exc


def read_resume_state(folder: Path) -> dict[str, Any] | None:
    """ExactResume's record in a checkpoint folder (None: the folder was written without it)."""
    path = Path(folder) / EXACT_RESUME_STATE
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ResumeRefusedError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(body, dict) or body.get("format") != STATE_FORMAT:
        raise ResumeRefusedError(path, f"not a {STATE_FORMAT} file")
    return body


def write_resume_state(folder: Path, body: dict[str, Any]) -> None:
    data = (json.dumps({"format": STATE_FORMAT, "version": STATE_VERSION, **body}, indent=1) + "\n").encode()
    atomic_write_file(Path(folder) / EXACT_RESUME_STATE, lambda f: f.write(data))


def commit_checkpoint(folder: Path, *, global_step: int, epoch: float | None, trainer: str | None,
                      metric: dict[str, Any] | None) -> list[str]:
    """Validate a folder Trainer just saved and, when clean, write its manifest (the commit marker).
    Returns the errors that kept it unconfirmed (empty: committed)."""
    report = validate_checkpoint(open_checkpoint(folder), siblings=False)
    errors = [f"{f.code}: {f.message}" for f in report.findings if f.severity is Severity.ERROR]
    if errors:
        return errors
    progress = {"epoch_float": epoch} if epoch is not None else {}
    write_manifest(folder, Manifest(checkpoint=folder.name, files=describe_files(folder), kind="periodic",
                                    global_step=global_step, progress=progress, metric=metric, trainer=trainer))
    return []


def rotate(output_dir: Path, limit: int | None, best: str | None) -> list[Path]:
    """Delete the oldest checkpoint-N folders beyond `limit`, never the newest verified one, the
    newest of all (just saved), nor the best; manifests of deleted folders go first, and manifests
    left without their folder go too. Returns what was deleted."""
    folders = checkpoint_folders(Path(output_dir))
    drop_orphan_manifests(Path(output_dir))
    if not limit or limit <= 0 or len(folders) <= limit:
        return []
    verified = newest_verified(Path(output_dir))
    protected = {folders[-1], *([verified] if verified else [])}
    if best:
        protected |= {p for p in folders if p.name == Path(best).name}
    deleted: list[Path] = []
    keep = max(limit, len(protected))
    for folder in folders:
        if len(folders) - len(deleted) <= keep:
            break
        if folder not in protected:
            delete_checkpoint(folder)
            deleted.append(folder)
    return deleted


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """checkpoint-N folders, by N (the global step Trainer names them by)."""
    return sorted((p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT_FOLDER.match(p.name)),
                  key=lambda p: int(CHECKPOINT_FOLDER.match(p.name).group(1)))  # type: ignore[union-attr]


def newest_verified(output_dir: Path) -> Path | None:
    verified = [p for p in checkpoint_folders(output_dir) if manifest_path(p).exists()]
    return verified[-1] if verified else None


def drop_orphan_manifests(output_dir: Path) -> None:
    """Trainer deletes folders, not manifests (its end-of-training cleanup for save_total_limit=1)."""
    for entry in output_dir.glob("checkpoint-*.manifest.json"):
        folder = entry.with_name(entry.name[: -len(".manifest.json")])
        if not folder.exists():
            entry.unlink(missing_ok=True)
