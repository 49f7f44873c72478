"""The command line the epoch-based trainers (retrieval, recsys, pretrained) share: starting or
resuming a run (``prepare_epoch_run``), the resume rules, the resume report and the interrupt's
exit. Resume rules: the checkpoint's config wins; ``--epochs`` (the total to reach) and, per
trainer, ``--lr`` (the seeds' learning-rate override on resume, applied from the next step) or
``--save-steps`` may change it; other flags that differ are named and ignored."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, TypeVar

from ckptkit.core.errors import CkptkitError
from ckptkit.training import ResumePoint, list_checkpoints, load_for_resume
from trainers.epoch_run import RunOptions
from trainers.runtime import Trained, run_interruptibly

EXIT_OK, EXIT_USAGE = 0, 2

C = TypeVar("C", bound="EpochConfig")


class EpochConfig(Protocol):
    name: str
    epochs: int
    learning_rate: float

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C: ...

    def with_overrides(self: C, **overrides: Any) -> C: ...


# config field -> the note when a resume changes it ({value}, {old}); the seeds' --lr on resume
SEED_CHANGES: Mapping[str, str] = {
    "epochs": "training to {value} epochs (the run had {old})",
    "learning_rate": "--lr {value} used from here on (the run had {old}); the schedule continues from its step",
}


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
        raise CkptkitError(point.path, f"its config is not one the {label} trainer writes ({exc}); cannot rebuild "
                           "the model") from exc
    cfg, notes = saved, []
    if args.config is not None and args.config != saved.name:
        notes.append(f"--config {args.config} ignored: this run is '{saved.name}' (the config comes from the checkpoint)")
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


@dataclass(frozen=True)
class EpochTrainer:
    """What the shared start/resume flow needs to know of one epoch-based trainer."""

    name: str  # the trainer its checkpoints name (``trainer`` field) and the ``python -m trainers.NAME``
    config_type: Any  # an EpochConfig class
    presets: Mapping[str, Any]
    default_preset: str
    default_out: Path
    describe: Callable[[Any], str]  # a fresh run's "(N users, ..., E epochs)"
    config_flags: Mapping[str, str]  # flag name -> config field
    run_type: Callable[..., Any]  # the EpochRun subclass, called with (config, options, point)
    saved_text: Callable[[Any, Path], str]  # (TrainResult, out) -> what an interrupt saved
    finished_text: Callable[[Any, Path], str]  # (TrainResult, out) -> the last line of a finished run
    label: str | None = None  # the trainer's name in errors, when not ``name``
    changes: Mapping[str, str] = field(default_factory=lambda: SEED_CHANGES)
    # the seed's own 'epoch' is the index of the last finished epoch (1) or the number finished (0)
    seed_epoch_offset: int = 0
    checkpoint_is_folder: bool = False  # then a checkpoint's run directory is always its parent


def run_epoch_trainer(parser: argparse.ArgumentParser, argv: Sequence[str] | None, trainer: EpochTrainer) -> int:
    """A trainer's whole command: parse, start or resume, train (Ctrl+C/SIGTERM: save and stop),
    and say how it ended. The exit code: 0, 2 for unusable input, 128+signal after a signal."""
    args = parser.parse_args(argv)
    overrides = config_overrides(args, trainer)
    trained = run_interruptibly(lambda: prepare_epoch_run(args, overrides, trainer), trainer.run_type)
    if isinstance(trained, int):
        return trained
    result, out = trained.result, trained.options.out
    if result.status == "interrupted":
        return exit_interrupted(trained, trainer, trainer.saved_text(result, out))
    trained.run.log(trainer.finished_text(result, out))
    return EXIT_OK


def config_overrides(args: argparse.Namespace, trainer: EpochTrainer) -> dict[str, Any]:
    """The config fields the command line set."""
    return {name: getattr(args, flag) for flag, name in trainer.config_flags.items() if getattr(args, flag) is not None}


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every trainer has for where it runs and how to crash or stop it on purpose."""
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--sync-save", action="store_true", help="write checkpoints in the loop instead of in the background")
    parser.add_argument("--kill-at-micro-step", type=int, metavar="M", help="SIGKILL this process after batch M (a real crash)")
    parser.add_argument("--stop-at-micro-step", type=int, metavar="M", help="interrupt after batch M: save there, exit")


def prepare_epoch_run(args: argparse.Namespace, overrides: dict[str, Any],
                      trainer: EpochTrainer) -> tuple[Any, RunOptions, ResumePoint | None] | int:
    """A fresh run's (config, options, None), a resumed one's (config, options, point), or the
    exit code after one line on stderr: an --out already holding a run, a finished run."""
    if args.resume is None:
        out = args.out or trainer.default_out
        if out.is_dir() and list_checkpoints(out):
            print(f"error: {out} already holds a run's checkpoints; continue it with --resume {out}, "
                  "or pass another --out", file=sys.stderr)
            return EXIT_USAGE
        cfg = trainer.presets[args.config or trainer.default_preset].with_overrides(**overrides)
        say(f"training {cfg.name} ({trainer.describe(cfg)}) into {out}")
        return cfg, run_options(args, out), None
    point = load_for_resume(args.resume)
    cfg, notes = config_for_resume(point, args, overrides, trainer.config_type, trainer.name, trainer.label, trainer.changes)
    in_run_dir = trainer.checkpoint_is_folder or point.path.is_file()
    out = args.out or (point.path.parent if in_run_dir else point.path)
    report_resume(point, cfg.epochs, notes)
    offset = trainer.seed_epoch_offset
    done = point.position.epoch if point.position is not None else int(point.checkpoint.get("epoch", -offset)) + offset
    if done >= cfg.epochs:
        print(f"error: {point.path} is a finished run: epoch {done} of {cfg.epochs}. Nothing to resume. "
              f"To train further: --epochs N (N > {done}).", file=sys.stderr)
        return EXIT_USAGE
    return cfg, run_options(args, out), point


def run_options(args: argparse.Namespace, out: Path) -> RunOptions:
    return RunOptions(out=out, keep_last=args.keep_last, device=args.device, asynchronous_save=not args.sync_save,
                      kill_at_micro_step=args.kill_at_micro_step, stop_at_micro_step=args.stop_at_micro_step)


def exit_interrupted(trained: Trained, trainer: EpochTrainer, saved: str) -> int:
    """Say where the run stopped, what it saved and how to go on; 128+signal after a signal."""
    run, position = trained.run, trained.result.record.position
    run.log(f"interrupted in epoch {position.epoch + 1} after batch {position.batch_in_epoch}/"
            f"{position.steps_per_epoch}; saved {saved}")
    run.log(f"resume with: python -m trainers.{trainer.name} --resume {trained.options.out}")
    return 128 + run.stop_signal if run.stop_signal is not None else EXIT_OK  # 130 Ctrl+C, 143 SIGTERM
