"""Command line of the LM trainer: flags, resume rules (config from the checkpoint), messages."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from ckptkit.core.errors import CkptkitError
from trainers.epoch_resume import config_for_resume as shared_config_for_resume
from trainers.runtime import run_interruptibly
from ckptkit.training import ResumePoint, list_checkpoints, load_for_resume, render_progress
from trainers.lm.config import DEFAULT_PRESET, PRESETS, SCHEDULE_FIELDS, LMConfig
from trainers.lm.loop import LMRun, RunOptions, distributed_session

# flag name -> LMConfig field
_CONFIG_FLAGS = {
    "max_steps": "max_steps", "save_interval": "save_interval", "eval_interval": "eval_interval",
    "log_interval": "log_interval", "grad_accum": "grad_accum", "batch_size": "batch_size",
    "lr": "learning_rate", "seed": "seed", "precision": "precision",
}
EXIT_OK, EXIT_USAGE = 0, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainers.lm", description="GPT-style LM on built-in synthetic text.")
    parser.add_argument("--config", choices=sorted(PRESETS), help=f"model/training preset (default {DEFAULT_PRESET})")
    parser.add_argument("--max-steps", type=int, help="optimizer steps to train")
    parser.add_argument("--save-interval", type=int, help="save checkpoint_step_N.pt every N steps")
    parser.add_argument("--eval-interval", type=int, help="evaluate (and maybe save best_model.pt) every N steps")
    parser.add_argument("--log-interval", type=int, help="print a log line every N steps")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    parser.add_argument("--batch-size", type=int, help="micro-batch size per rank")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--seed", type=int, help="seed for data, init and sampling order")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--out", type=Path, help="run directory (default runs/lm; on resume: the checkpoint's run)")
    parser.add_argument("--resume", type=Path, metavar="PATH|RUN_DIR", help="checkpoint, or run directory (newest valid)")
    parser.add_argument("--extend-steps", type=int, metavar="N", help="continue a finished run up to N steps")
    parser.add_argument("--keep-last", type=int, default=3, help="periodic checkpoints to keep (best and newest always kept)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--sync-save", action="store_true", help="write checkpoints in the loop instead of in the background")
    parser.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP with sharded (DCP) checkpoints")
    parser.add_argument("--kill-at-micro-step", type=int, metavar="M", help="SIGKILL this process after batch M (a real crash)")
    parser.add_argument("--stop-at-micro-step", type=int, metavar="M", help="interrupt after batch M: save there, exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {field: getattr(args, flag) for flag, field in _CONFIG_FLAGS.items() if getattr(args, flag) is not None}
    trained = run_interruptibly(lambda: _prepare(args, overrides), LMRun, session=distributed_session)
    if isinstance(trained, int):
        return trained
    run, result, cfg, options = trained.run, trained.result, trained.config, trained.options
    if result.status == "interrupted":
        where = render_progress(result.position, result.global_step, cfg.max_steps)
        run.log(f"interrupted at {where}; saved {', '.join(p.name for p in result.checkpoints) or 'on rank 0'}")
        run.log(f"resume with: python -m trainers.lm --resume {options.out}")
        return 128 + run.stop_signal if run.stop_signal is not None else EXIT_OK  # 130 Ctrl+C, 143 SIGTERM
    run.log(f"finished: step {result.global_step}; final checkpoint {options.out / 'final_model.pt'}")
    return EXIT_OK


def _prepare(args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[LMConfig, RunOptions, ResumePoint | None] | int:
    if args.resume is None:
        if args.extend_steps is not None:
            print("error: --extend-steps continues a finished run; pass it with --resume", file=sys.stderr)
            return EXIT_USAGE
        out = args.out or Path("runs/lm")
        if out.is_dir() and list_checkpoints(out):
            print(f"error: {out} already holds a run's checkpoints; continue it with --resume {out}, "
                  "or pass another --out", file=sys.stderr)
            return EXIT_USAGE
        cfg = PRESETS[args.config or DEFAULT_PRESET].with_overrides(**overrides)
        _say(f"training {cfg.name} (~{cfg.approx_params(40) / 1e6:.2f}M parameters) into {out}")
        return cfg, _options(args, out), None
    point = load_for_resume(args.resume)
    cfg, notes = config_for_resume(point, args, overrides)
    out = args.out or (point.path.parent if point.path.is_file() or point.sharded else point.path)
    _report_resume(point, cfg, notes)
    if point.global_step >= cfg.max_steps:
        print(f"error: {point.path} is a finished run: step {point.global_step} of max_steps {cfg.max_steps}. "
              f"Nothing to resume. To train further: --extend-steps N (N > {point.global_step}).", file=sys.stderr)
        return EXIT_USAGE
    return cfg, _options(args, out), point


def config_for_resume(point: ResumePoint, args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[LMConfig, list[str]]:
    """The checkpoint's config wins; schedule flags may change it; --extend-steps raises max_steps."""
    changes = {f: f"--{f.replace('_', '-')} {{value}} used (the run had {{old}})" for f in SCHEDULE_FIELDS}
    cfg, notes = shared_config_for_resume(point, args, overrides, LMConfig, "lm", "LM", changes,
                                          hints={"max_steps": "; to train longer use --extend-steps"})
    if args.extend_steps is not None:
        if args.extend_steps <= point.global_step:
            raise CkptkitError(point.path, f"--extend-steps {args.extend_steps} is not beyond the checkpoint's step {point.global_step}")
        notes.append(f"extending the run from max_steps {cfg.max_steps} to {args.extend_steps}")
        cfg = cfg.with_overrides(max_steps=args.extend_steps)
    return cfg, notes


def _report_resume(point: ResumePoint, cfg: LMConfig, notes: list[str]) -> None:
    verified = "" if any("no manifest" in w for w in point.warnings) else " (verified: manifest size and CRC-32, weights-only load)"
    _say(f"resuming from {point.path}{verified}")
    if point.position is not None:
        _say("  at " + render_progress(point.position, point.global_step, cfg.max_steps))
    for warning in point.warnings:
        _say(f"  warning: {warning}")
    for note in notes:
        _say(f"  note: {note}")


def _options(args: argparse.Namespace, out: Path) -> RunOptions:
    return RunOptions(
        out=out, keep_last=args.keep_last, device=args.device, asynchronous_save=not args.sync_save,
        fsdp=args.fsdp, kill_at_micro_step=args.kill_at_micro_step, stop_at_micro_step=args.stop_at_micro_step,
    )


def _say(text: str) -> None:
    from ckptkit.training import rank_and_world_size

    if rank_and_world_size()[0] == 0:
        print(text, flush=True)
