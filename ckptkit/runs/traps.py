"""Run-level findings: the traps of a whole run directory that no single checkpoint shows.

Each trap looks at a scanned `Run` (entries ordered by progress) and yields
(the checkpoints it is about, Finding). Codes are `run.*`. Registered in TRAPS.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

from ckptkit.core.checkpoint import Finding, Severity
from ckptkit.families import between_saves, leftover_copy
from ckptkit.runs.entries import BEST_NAME, FINAL_NAME, HF_CHECKPOINT, HF_TEMP, RECENT_NAME, TEMP_MARKER, Run, RunEntry

Trap = Callable[[Run], Iterator[tuple[list[Path], Finding]]]


def _ahead_of(entry: RunEntry, run: Run, between: bool = True) -> RunEntry | None:
    """The most advanced readable checkpoint beside `entry` (same folder) strictly further than it;
    `between=False` leaves out a system's saves made between two of its recent file's (timm's
    recovery files).

    Only siblings are compared: a directory may hold several runs, whose counters mean nothing
    to each other; the checkpoints of one run are saved into one folder.
    """
    if not entry.progress.known:
        return None
    key = entry.progress.sort_key()
    ahead = [e for e in run.entries if e.path.parent == entry.path.parent and e.progress.known
             and not e.temporary and not e.backup and e.health.status != "broken" and e.progress.sort_key() > key
             and (between or not between_saves(e.path.name))]
    return ahead[-1] if ahead else None


def _latest_fix(run: Run) -> str:
    return f"ckptkit latest {shlex.quote(str(run.root))}"


def _named_but_behind(run: Run, name: re.Pattern[str], skip_temporary: bool,
                      between: bool = True) -> Iterator[tuple[RunEntry, RunEntry]]:
    """Checkpoints whose file name matches `name` while a sibling got further, with that sibling."""
    for entry in run.entries:
        if not name.search(entry.path.name) or entry.backup or (skip_temporary and entry.temporary):
            continue
        later = _ahead_of(entry, run, between)
        if later is not None:
            yield entry, later


def best_behind_latest(run: Run) -> Iterator[tuple[list[Path], Finding]]:
    """run_experiment.py LM: `--resume checkpoints/best_model.pt` throws away every step after the
    best one. Information: every healthy run whose metric stopped improving looks like this."""
    for entry, later in _named_but_behind(run, BEST_NAME, skip_temporary=False):
        yield [entry.path], Finding(
            "run.best-not-latest", Severity.INFO, entry.relative,
            f"{entry.relative} is the best model ({entry.progress.describe()}); {later.relative} is further "
            f"({later.progress.describe()}). Resuming from the best model repeats the training after it and "
            f"drops the later optimizer/scheduler state: resume from {later.relative}", _latest_fix(run))


def stale_recent(run: Run) -> Iterator[tuple[list[Path], Finding]]:
    """EnStack: a 'last'/'recent' checkpoint older than another one (overwritten, or rolled back).
    A final file (`checkpoint-recent.pth.final`) is the end of the run it finished: a run
    extended past it is newer, not the final file stale, nor is timm's last.pth.tar when a recovery
    file saved since is further."""
    for entry, later in _named_but_behind(run, RECENT_NAME, skip_temporary=True, between=False):
        if FINAL_NAME.search(entry.path.name) or entry.backup:
            continue
        yield [entry.path], Finding(
            "run.stale-latest", Severity.WARNING, entry.relative,
            f"{entry.relative} is named as the newest checkpoint but holds {entry.progress.describe()}, "
            f"older than {later.relative} ({later.progress.describe()}): it was overwritten by an older "
            f"save or restored from an old copy. Resume from {later.relative}", _latest_fix(run))


def temporary_leftovers(run: Run) -> Iterator[tuple[list[Path], Finding]]:
    """Interrupted saves: Trainer's `tmp-checkpoint-N`, ckptkit's `*.ckptkit-tmp-*`."""
    for entry in run.entries:
        if not entry.temporary:
            continue
        leftover = leftover_copy(entry.path.name)
        who = ("Trainer writes tmp-checkpoint-N and renames it to checkpoint-N when complete"
               if HF_TEMP.match(entry.path.name) else
               f"{leftover[1]} saves into {entry.path.name} and moves it to {leftover[2]} when complete"
               if leftover else f"ckptkit's atomic writes use '{TEMP_MARKER}' names until the write is complete")
        yield [entry.path], Finding(
            "run.temporary-leftover", Severity.WARNING, entry.relative,
            f"{entry.relative} is a temporary checkpoint left by a save that did not finish ({who}): "
            "never resume from it; delete it once no save is running",
            f"rm -r {shlex.quote(str(entry.path))}")


def hf_missing_trainer_state(run: Run) -> Iterator[tuple[list[Path], Finding]]:
    """HF Trainer LoRA ranker: an HF checkpoint-N without trainer_state.json resumes at step 0."""
    for entry in run.entries:
        if entry.is_folder and HF_CHECKPOINT.match(entry.path.name) and not HF_TEMP.match(entry.path.name) \
                and not (entry.path / "trainer_state.json").is_file():
            yield [entry.path], Finding(
                "run.hf-missing-trainer-state", Severity.ERROR, entry.relative,
                f"{entry.relative} has no trainer_state.json: --resume_from_checkpoint {entry.relative} would "
                "restart at step 0 (epoch, global_step, log_history and best metric are lost)", _latest_fix(run))


def swap_leftover(run: Run) -> Iterator[tuple[list[Path], Finding]]:
    """EnStack: save_checkpoint moves last_checkpoint to .backup_last_checkpoint, then the new copy
    in; a crash between the two leaves no last_checkpoint, and the next train() deletes every
    .backup_* (and the resume scripts skip '.' folders): the only finished copy is lost."""
    for entry in run.entries:
        leftover = leftover_copy(entry.path.name)
        if leftover is None or leftover[0] != "backup" or (entry.path.parent / leftover[2]).exists():
            continue
        target = entry.path.parent / leftover[2]
        yield [entry.path], Finding(
            "run.swap-leftover", Severity.WARNING, entry.relative,
            f"{entry.relative} is the finished copy of {leftover[2]} that {leftover[1]} moved aside while "
            f"saving, and {leftover[2]} is missing: the save crashed mid-swap. {leftover[1]}'s next training "
            "start deletes every .backup_* folder; restore it first",
            f"mv {shlex.quote(str(entry.path))} {shlex.quote(str(target))}")


def latest_unusable(run: Run) -> Iterator[tuple[list[Path], Finding]]:
    """The furthest checkpoint of a run cannot be resumed from: say so, and what will be used instead."""
    for entries in run.groups().values():
        yield from _latest_unusable(run, entries)


def _latest_unusable(run: Run, entries: list[RunEntry]) -> Iterator[tuple[list[Path], Finding]]:
    known = [e for e in entries if e.progress.known and not e.temporary and not e.backup]
    if not known or known[-1].health.status != "broken":
        return
    top = known[-1]
    pick = next((e for e in entries if "resume" in e.markers), None)
    instead = (f"the most advanced usable one is {pick.relative} ({pick.progress.describe()})"
               if pick else "no other checkpoint is usable")
    yield [top.path], Finding(
        "run.latest-broken", Severity.WARNING, top.relative,
        f"the most advanced checkpoint, {top.relative} ({top.progress.describe()}), is broken "
        f"({top.health.reason}); {instead}", _latest_fix(run))


TRAPS: list[Trap] = [best_behind_latest, stale_recent, temporary_leftovers, swap_leftover, hf_missing_trainer_state,
                     latest_unusable]


def compares_siblings(entry: RunEntry) -> bool:
    """Whether a trap in TRAPS could say something about `entry` that only its siblings show.

    `ckptkit validate PATH` reads PATH's siblings only when this is true (a folder of 100
    checkpoints is not read to validate one of them). It must stay in step with TRAPS: the
    name-based traps compare a best/last/recent checkpoint with the ones further than it, and
    `latest_unusable` speaks of a broken checkpoint when it is the furthest; the others
    (temporary leftovers, a checkpoint-N without trainer_state.json) look at the entry alone.
    """
    name = entry.path.name
    return bool(BEST_NAME.search(name) or RECENT_NAME.search(name) or entry.health.status == "broken")
