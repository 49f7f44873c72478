"""The command-line pieces every training script shares, as functions it calls: the run flags,
the refusal to train into a folder that already holds a run, the resume rules (the checkpoint's
config wins; named flags may change it; the others are named and ignored) and the resume report.

Nothing here prints or exits: each returns what the script prints, or raises CkptkitError."""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ckptkit.core.errors import CkptkitError
from ckptkit.training.resume import ResumePoint
from ckptkit.training.retention import list_checkpoints
from ckptkit.training.runtime import RunOptions

EXIT_OK, EXIT_USAGE = 0, 2
DEFAULT_PROGRESS_EVERY = 10.0  # seconds between progress lines when stdout is not a terminal

C = TypeVar("C", bound="TrainerConfig")


class TrainerConfig(Protocol):
    @property
    def name(self) -> str: ...  # a property: frozen dataclasses' fields are read-only

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C: ...

    def with_overrides(self: C, **overrides: Any) -> C: ...


# config field -> the note when a resume changes it ({value}, {old}); the seeds' --lr on resume
SEED_CHANGES: Mapping[str, str] = {
    "epochs": "training to {value} epochs (the run had {old})",
    "learning_rate": "--lr {value} used from here on (the run had {old}); the schedule continues from its step",
}


def add_run_flags(parser: argparse.ArgumentParser, fsdp: bool = False) -> None:
    """Where the run runs, how it shows progress, and how to crash or stop it on purpose."""
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--sync-save", action="store_true", help="write checkpoints in the loop instead of in the background"
    )
    if fsdp:
        parser.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP with sharded (DCP) checkpoints")
    parser.add_argument(
        "--kill-at-micro-step", type=int, metavar="M", help="SIGKILL this process after batch M (a real crash)"
    )
    parser.add_argument("--stop-at-micro-step", type=int, metavar="M", help="interrupt after batch M: save there, exit")
    parser.add_argument("--progress-every", type=float, default=DEFAULT_PROGRESS_EVERY, metavar="SECONDS",
                        help="when stdout is not a terminal, a progress line every SECONDS (0: none; "
                             f"default {DEFAULT_PROGRESS_EVERY:g}); a terminal gets a live line")


def run_options(args: argparse.Namespace, out: Path) -> RunOptions:
    every = args.progress_every if args.progress_every and args.progress_every > 0 else None
    return RunOptions(out=out, keep_last=args.keep_last, device=args.device, asynchronous_save=not args.sync_save,
                      fsdp=getattr(args, "fsdp", False), kill_at_micro_step=args.kill_at_micro_step,
                      stop_at_micro_step=args.stop_at_micro_step, progress_every=every)


def existing_run_error(out: Path) -> str | None:
    """Why a fresh run may not train into ``out`` (it holds a run's checkpoints), or None."""
    if out.is_dir() and list_checkpoints(out):
        return f"{out} already holds a run's checkpoints; continue it with --resume {out}, or pass another --out"
    return None


def config_for_resume(point: ResumePoint, args: argparse.Namespace, overrides: dict[str, Any],
                      config_type: type[C], trainer: str, label: str | None = None,
                      changes: Mapping[str, str] = SEED_CHANGES,
                      hints: Mapping[str, str] | None = None) -> tuple[C, list[str]]:
    """The run's config from the checkpoint, with the flags a resume may change (``changes``),
    and notes. ``label`` names the trainer in errors where its users know it by another name;
    ``hints``: what to add to the note of a flag that is ignored (how to change it instead)."""
    label = label or trainer
    if point.trainer not in (None, trainer):
        raise CkptkitError(point.path, f"was written by the '{point.trainer}' trainer, not the {label} trainer")
    try:
        saved = config_type.from_dict(point.config)
    except TypeError as exc:  # missing fields: not this trainer's config (or none at all)
        raise CkptkitError(
            point.path, f"its config is not one the {label} trainer writes ({exc}); cannot rebuild the model"
        ) from exc
    cfg, notes = saved, []
    if args.config is not None and args.config != saved.name:
        notes.append(
            f"--config {args.config} ignored: this run is '{saved.name}' (the config comes from the checkpoint)"
        )
    for name, value in overrides.items():
        old = getattr(saved, name)
        if name in changes:
            cfg = cfg.with_overrides(**{name: value})
            if value != old:
                notes.append(changes[name].format(value=value, old=old))
        elif value != old:
            hint = (hints or {}).get(name, "")
            notes.append(f"--{name.replace('_', '-')} {value} ignored: the run uses {old}{hint}")
    return cfg, notes


def resume_report(point: ResumePoint, at: str | None, notes: list[str]) -> list[str]:
    """The lines a resume starts with: the checkpoint (and how it was verified), where the run
    stands (``at``, rendered by the trainer from the data position), warnings, notes."""
    verified = (
        ""
        if any("no manifest" in w for w in point.warnings)
        else " (verified: manifest size and CRC-32, weights-only load)"
    )
    lines = [f"resuming from {point.path}{verified}"]
    if at is not None:
        lines.append(f"  at {at}")
    lines += [f"  warning: {warning}" for warning in point.warnings]
    lines += [f"  note: {note}" for note in notes]
    return lines
