"""Command line of the recsys trainer: seed 000's flags, resume rules, messages, exit codes."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from trainers.runtime import run_interruptibly
from ckptkit.training import ResumePoint, list_checkpoints, load_for_resume
from ckptkit.training.recsys_layout import FINAL_NAME
from trainers.epoch_resume import config_for_resume, report_resume, say
from trainers.recsys.config import DEFAULT_PRESET, PRESETS, RecsysConfig
from trainers.recsys.loop import RecsysRun, RunOptions

# flag name -> RecsysConfig field (seed 000's names: --lr, --num_epochs, --batch_size)
_CONFIG_FLAGS = {"batch_size": "batch_size", "gradient_accumulation": "grad_accum", "lr": "learning_rate",
                 "seed": "seed", "precision": "precision", "epochs": "epochs"}
EXIT_OK, EXIT_USAGE = 0, 2
DEFAULT_OUT = Path("experiments/lru/synthetic/models")  # seed 000: experiments/{model_code}/{dataset_code}/models


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainers.recsys",
                                     description="Sequential recommender on built-in synthetic interactions.")
    parser.add_argument("--config", "--dataset_code", choices=sorted(PRESETS), help=f"model/data preset (default {DEFAULT_PRESET})")
    parser.add_argument("--batch_size", "--batch-size", type=int, help="batch size (default 128)")
    parser.add_argument("--epochs", "--num_epochs", type=int, help="total epochs; on resume, raise it to train further")
    parser.add_argument("--gradient-accumulation", type=int, help="batches per optimizer step (default 1)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--lr", type=float, help="peak learning rate; on resume, the new peak from the next step on")
    parser.add_argument("--seed", type=int, help="seed for data, init and sampling order")
    parser.add_argument("--out", type=Path, help=f"run directory (default {DEFAULT_OUT}; on resume: the checkpoint's run)")
    parser.add_argument("--resume", "--resume_from_checkpoint", type=Path, metavar="PATH|RUN_DIR",
                        help="checkpoint, or run directory (newest valid)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--sync-save", action="store_true", help="write checkpoints in the loop instead of in the background")
    parser.add_argument("--kill-at-micro-step", type=int, metavar="M", help="SIGKILL this process after batch M (a real crash)")
    parser.add_argument("--stop-at-micro-step", type=int, metavar="M", help="interrupt after batch M: save there, exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {field: getattr(args, flag) for flag, field in _CONFIG_FLAGS.items() if getattr(args, flag) is not None}
    trained = run_interruptibly(lambda: _prepare(args, overrides), RecsysRun)
    if isinstance(trained, int):
        return trained
    run, result, options = trained.run, trained.result, trained.options
    position = result.record.position
    if result.status == "interrupted":
        run.log(f"interrupted in epoch {position.epoch + 1} after batch {position.batch_in_epoch}/"
                f"{position.steps_per_epoch}; saved {', '.join(dict.fromkeys(p.name for p in result.checkpoints))}")
        run.log(f"resume with: python -m trainers.recsys --resume {options.out}")
        return 128 + run.stop_signal if run.stop_signal is not None else EXIT_OK  # 130 Ctrl+C, 143 SIGTERM
    final = [p.name for p in result.checkpoints if p.name == FINAL_NAME]
    run.log(f"finished: {position.epoch} epochs, step {result.record.global_step}; final checkpoint "
            f"{options.out / final[-1] if final else options.out}")
    return EXIT_OK


def _prepare(args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[RecsysConfig, RunOptions, ResumePoint | None] | int:
    if args.resume is None:
        out = args.out or DEFAULT_OUT
        if out.is_dir() and list_checkpoints(out):
            print(f"error: {out} already holds a run's checkpoints; continue it with --resume {out}, "
                  "or pass another --out", file=sys.stderr)
            return EXIT_USAGE
        cfg = PRESETS[args.config or DEFAULT_PRESET].with_overrides(**overrides)
        say(f"training {cfg.name} ({cfg.num_users} users, {cfg.num_items} items, {cfg.epochs} epochs) into {out}")
        return cfg, _options(args, out), None
    point = load_for_resume(args.resume)
    cfg, notes = config_for_resume(point, args, overrides, RecsysConfig, "recsys")
    out = args.out or (point.path.parent if point.path.is_file() else point.path)
    report_resume(point, cfg.epochs, notes)
    # the seed's 'epoch' is the index of the last finished epoch
    done = point.position.epoch if point.position is not None else int(point.checkpoint.get("epoch", -1)) + 1
    if done >= cfg.epochs:
        print(f"error: {point.path} is a finished run: epoch {done} of {cfg.epochs}. Nothing to resume. "
              f"To train further: --epochs N (N > {done}).", file=sys.stderr)
        return EXIT_USAGE
    return cfg, _options(args, out), point


def _options(args: argparse.Namespace, out: Path) -> RunOptions:
    return RunOptions(out=out, device=args.device, asynchronous_save=not args.sync_save,
                      kill_at_micro_step=args.kill_at_micro_step, stop_at_micro_step=args.stop_at_micro_step)

