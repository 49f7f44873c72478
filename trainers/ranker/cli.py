"""Command line of the LoRA ranker: flags, resume (the run's saved config, a verified checkpoint), messages."""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from ckptkit.core.errors import CkptkitError

EXIT_OK, EXIT_USAGE = 0, 2
# flag -> RankerConfig field; on resume a flag that differs from the run's saved value is refused
# by ExactResume (data order, schedule) or only warned about (eval/save interval).
_CONFIG_FLAGS = {"samples": "samples", "micro_batch": "micro_batch", "train_batch": "train_batch",
                 "warmup_steps": "warmup_steps", "epochs": "epochs", "lr": "lr", "val_iterations": "val_iterations",
                 "patience": "patience", "seed": "seed", "loader_seed": "loader_seed"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainers.ranker",
                                     description="LlamaRec-style LoRA ranker on Hugging Face Trainer, "
                                                 "synthetic ranking prompts, tiny random Llama.")
    parser.add_argument("--out", type=Path, help="output_dir (default runs/ranker; on resume: the checkpoint's run)")
    parser.add_argument("--resume", type=Path, metavar="PATH|RUN_DIR",
                        help="a checkpoint-N folder, or the output_dir (its newest verified checkpoint)")
    parser.add_argument("--samples", type=int, help="training prompts")
    parser.add_argument("--micro-batch", type=int, help="per-device micro-batch (lora_micro_batch_size)")
    parser.add_argument("--train-batch", type=int, help="batch per optimizer step (accumulation = train/micro)")
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--val-iterations", type=int, help="evaluate and save every N optimizer steps")
    parser.add_argument("--patience", type=int, help="early-stopping patience, in evaluations")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--loader-seed", type=int, help="give the train loader its own seeded generator")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA (bf16) when there is one, else CPU (fp32)")
    parser.add_argument("--stop-at-step", type=int, metavar="N", help="stop after optimizer step N (and its save)")
    parser.add_argument("--kill-at-step", type=int, metavar="N", help="SIGKILL this process after step N's save")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except CkptkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    # transformers takes seconds to import: not before the arguments are known to be usable
    from trainers.ranker.train import RankerConfig, StopAt, build_trainer
    from ckptkit.integrations.hf import verified_checkpoint

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return EXIT_USAGE
    overrides = {field: getattr(args, flag) for flag, field in _CONFIG_FLAGS.items() if getattr(args, flag) is not None}
    resume = None
    if args.resume is not None:
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always")
            resume = verified_checkpoint(args.resume)
        for note in notes:
            print(f"warning: {note.message}", file=sys.stderr)
        out = args.out or (Path(resume).parent if resume else args.resume)
    else:
        out = args.out or Path("runs/ranker")
    saved = (out / "ranker_config.json").is_file()
    cfg = replace(RankerConfig.load(out) if saved else RankerConfig(), **overrides)
    if not saved:
        cfg.save(out)
    trainer, _ = build_trainer(cfg, out, args.device)
    if args.stop_at_step or args.kill_at_step:
        trainer.add_callback(StopAt(args.stop_at_step, args.kill_at_step))
    if resume:
        print(f"resuming from {resume}")
    started = time.perf_counter()
    first_step = trainer.state.global_step
    result = trainer.train(resume_from_checkpoint=resume)
    steps = result.global_step - (int(Path(resume).name.split("-")[-1]) if resume else first_step)
    per_step = (time.perf_counter() - started) / max(steps, 1)
    best = trainer.state.best_model_checkpoint
    print(f"trained to step {result.global_step} ({trainer.state.epoch:.2f} epochs, {per_step:.3f} s/step); "
          f"best {cfg.best_metric} {trainer.state.best_metric} at {Path(best).name if best else '-'}")
    print(f"resume with: python -m trainers.ranker --resume {out}   (or: ckptkit resume {out})")
    return EXIT_OK

