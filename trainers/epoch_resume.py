"""Resume rules shared by the epoch-based trainers (retrieval, recsys): the checkpoint's config
wins; ``--epochs`` (the total to reach) and ``--lr`` (the seeds' learning-rate override on
resume, applied from the next step) may change it; other flags that differ are named and ignored."""
from __future__ import annotations

import argparse
from typing import Any, Protocol, TypeVar

from ckptkit.errors import CkptkitError
from ckptkit.training import ResumePoint

C = TypeVar("C", bound="EpochConfig")


class EpochConfig(Protocol):
    name: str
    epochs: int
    learning_rate: float

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C: ...

    def with_overrides(self: C, **overrides: Any) -> C: ...


def config_for_resume(point: ResumePoint, args: argparse.Namespace, overrides: dict[str, Any],
                      config_type: type[C], trainer: str) -> tuple[C, list[str]]:
    """The run's config from the checkpoint, with the flags a resume may change, and notes."""
    if point.trainer not in (None, trainer):
        raise CkptkitError(point.path, f"was written by the '{point.trainer}' trainer, not the {trainer} trainer")
    try:
        saved = config_type.from_dict(point.config)
    except TypeError as exc:  # missing fields: not this trainer's config (or none at all)
        raise CkptkitError(point.path, f"its config is not a {trainer} trainer config ({exc}); cannot rebuild the model") from exc
    cfg, notes = saved, []
    if args.config is not None and args.config != saved.name:
        notes.append(f"--config {args.config} ignored: this run is '{saved.name}' (the config comes from the checkpoint)")
    for field, value in overrides.items():
        old = getattr(saved, field)
        if field == "epochs":
            cfg = cfg.with_overrides(epochs=value)
            if value != old:
                notes.append(f"training to {value} epochs (the run had {old})")
        elif field == "learning_rate":
            cfg = cfg.with_overrides(learning_rate=value)
            if value != old:
                notes.append(f"--lr {value} used from here on (the run had {old}); the schedule continues from its step")
        elif value != old:
            notes.append(f"--{field.replace('_', '-')} {value} ignored: the run uses {old}")
    return cfg, notes


def report_resume(point: ResumePoint, epochs: int, notes: list[str]) -> None:
    verified = "" if any("no manifest" in w for w in point.warnings) else " (verified: manifest size and CRC-32, weights-only load)"
    say(f"resuming from {point.path}{verified}")
    if point.position is not None:
        p = point.position
        say(f"  at epoch {p.epoch + 1} | batch {p.batch_in_epoch}/{p.steps_per_epoch} | step {point.global_step} "
            f"| {p.epoch} of {epochs} epochs complete")
    for warning in point.warnings:
        say(f"  warning: {warning}")
    for note in notes:
        say(f"  note: {note}")


def say(text: str) -> None:
    print(text, flush=True)
