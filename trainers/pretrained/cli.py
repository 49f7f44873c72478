"""Command line of seed 003's classifier trainer: flags, resume rules, messages, exit codes.

The retrieval trainer's resume report and options are reused; what differs is the config and
the folders it names.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from ckptkit.errors import CkptkitError
from trainers.runtime import run_interruptibly
from ckptkit.training import ResumePoint, list_checkpoints, load_for_resume
from trainers.pretrained.config import DEFAULT_PRESET, PRESETS, ClassifierConfig
from trainers.pretrained.loop import TRAINER_NAME, PretrainedRun, RunOptions
from trainers.epoch_resume import report_resume, say
from trainers.retrieval.cli import _options

_CONFIG_FLAGS = {"batch_size": "batch_size", "gradient_accumulation": "grad_accum", "lr": "learning_rate",
                 "seed": "seed", "precision": "precision", "epochs": "epochs", "save_steps": "save_steps"}
_CHANGEABLE = ("epochs", "save_steps")  # on resume; the rest would make the run another run
EXIT_OK, EXIT_USAGE = 0, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainers.pretrained",
                                     description="Tiny text classifier on built-in synthetic sequences (seed 003).")
    parser.add_argument("--config", choices=sorted(PRESETS), help=f"model/data preset (default {DEFAULT_PRESET})")
    parser.add_argument("--batch-size", type=int, help="batch size (seed 003's default 16)")
    parser.add_argument("--epochs", type=int, help="total epochs; on resume, raise it to train further")
    parser.add_argument("--save-steps", type=int, help="a mid-epoch last_checkpoint every N batches (default 500)")
    parser.add_argument("--gradient-accumulation", type=int, help="batches per optimizer step (default 1)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--seed", type=int, help="seed for data, init and sampling order")
    parser.add_argument("--out", type=Path, help="run directory (default runs/pretrained; on resume: the checkpoint's run)")
    parser.add_argument("--resume", type=Path, metavar="PATH|RUN_DIR", help="checkpoint folder, or run directory (newest valid)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--sync-save", action="store_true", help="write checkpoints in the loop instead of in the background")
    parser.add_argument("--kill-at-micro-step", type=int, metavar="M", help="SIGKILL this process after batch M (a real crash)")
    parser.add_argument("--stop-at-micro-step", type=int, metavar="M", help="interrupt after batch M: save there, exit")
    parser.set_defaults(keep_last=None)  # one last_checkpoint/ is replaced in place: nothing to prune
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {field: getattr(args, flag) for flag, field in _CONFIG_FLAGS.items() if getattr(args, flag) is not None}
    trained = run_interruptibly(lambda: _prepare(args, overrides), PretrainedRun)
    if isinstance(trained, int):
        return trained
    run, result, options = trained.run, trained.result, trained.options
    position = result.record.position
    if result.status == "interrupted":
        run.log(f"interrupted in epoch {position.epoch + 1} after batch {position.batch_in_epoch}/"
                f"{position.steps_per_epoch}; saved {options.out / 'last_checkpoint'}")
        run.log(f"resume with: python -m trainers.pretrained --resume {options.out}")
        return 128 + run.stop_signal if run.stop_signal is not None else EXIT_OK
    run.log(f"finished: {position.epoch} epochs, step {result.record.global_step}; best val f1 "
            f"{result.record.best_f1:.4f}; model in {options.out / 'last_checkpoint'}")
    return EXIT_OK


def _prepare(args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[ClassifierConfig, RunOptions, ResumePoint | None] | int:
    if args.resume is None:
        out = args.out or Path("runs/pretrained")
        if out.is_dir() and list_checkpoints(out):
            print(f"error: {out} already holds a run's checkpoints; continue it with --resume {out}, "
                  "or pass another --out", file=sys.stderr)
            return EXIT_USAGE
        cfg = PRESETS[args.config or DEFAULT_PRESET].with_overrides(**overrides)
        say(f"training {cfg.name} ({cfg.num_train} sequences, {cfg.epochs} epochs) into {out}")
        return cfg, _options(args, out), None
    point = load_for_resume(args.resume)
    cfg, notes = config_for_resume(point, args, overrides)
    out = args.out or point.path.parent   # a checkpoint is a folder inside its run directory
    report_resume(point, cfg.epochs, notes)
    done = point.position.epoch if point.position is not None else int(point.checkpoint.get("epoch", 0))
    if done >= cfg.epochs:
        print(f"error: {point.path} is a finished run: epoch {done} of {cfg.epochs}. Nothing to resume. "
              f"To train further: --epochs N (N > {done}).", file=sys.stderr)
        return EXIT_USAGE
    return cfg, _options(args, out), point


def config_for_resume(point: ResumePoint, args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[ClassifierConfig, list[str]]:
    """The checkpoint's config wins; --epochs (the total to reach) and --save-steps may change it."""
    if point.trainer not in (None, TRAINER_NAME):
        raise CkptkitError(point.path, f"was written by the '{point.trainer}' trainer, not the classifier trainer")
    try:
        saved = ClassifierConfig.from_dict(point.config)
    except TypeError as exc:  # missing fields: not this trainer's config (or none at all)
        raise CkptkitError(point.path, f"its config is not a classifier trainer config ({exc}); cannot rebuild the model") from exc
    cfg, notes = saved, []
    if args.config is not None and args.config != saved.name:
        notes.append(f"--config {args.config} ignored: this run is '{saved.name}' (the config comes from the checkpoint)")
    for field, value in overrides.items():
        old = getattr(saved, field)
        if field in _CHANGEABLE:
            cfg = cfg.with_overrides(**{field: value})
            if value != old:
                notes.append(f"--{field.replace('_', '-')} {value} from here on (the run had {old})")
        elif value != old:
            notes.append(f"--{field.replace('_', '-')} {value} ignored: the run uses {old}")
    return cfg, notes
