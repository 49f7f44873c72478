"""Command line of the recsys trainer: seed 000's flags and messages on the epoch trainers'
shared start/resume flow (trainers.epoch_resume)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ckptkit.training.recsys_layout import FINAL_NAME
from trainers.epoch_resume import EpochTrainer, add_run_flags, run_epoch_trainer
from trainers.epoch_run import TrainResult
from trainers.recsys.config import DEFAULT_PRESET, PRESETS, RecsysConfig
from trainers.recsys.loop import TRAINER_NAME, RecsysRun

DEFAULT_OUT = Path("experiments/lru/synthetic/models")  # seed 000: experiments/{model_code}/{dataset_code}/models


def _saved(result: TrainResult, out: Path) -> str:
    # an epoch's end and the interrupt may both have written checkpoint-recent.pth
    return ", ".join(dict.fromkeys(p.name for p in result.checkpoints))


def _finished(result: TrainResult, out: Path) -> str:
    final = [p.name for p in result.checkpoints if p.name == FINAL_NAME]
    return (f"finished: {result.record.position.epoch} epochs, step {result.record.global_step}; final checkpoint "
            f"{out / final[-1] if final else out}")


TRAINER = EpochTrainer(
    name=TRAINER_NAME, config_type=RecsysConfig, presets=PRESETS, default_preset=DEFAULT_PRESET,
    run_type=RecsysRun, saved_text=_saved, finished_text=_finished,
    default_out=DEFAULT_OUT,
    describe=lambda cfg: f"{cfg.num_users} users, {cfg.num_items} items, {cfg.epochs} epochs",
    # flag name -> RecsysConfig field (seed 000's names: --lr, --num_epochs, --batch_size)
    config_flags={"batch_size": "batch_size", "gradient_accumulation": "grad_accum", "lr": "learning_rate",
                  "seed": "seed", "precision": "precision", "epochs": "epochs"},
)


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
    add_run_flags(parser)
    parser.set_defaults(keep_last=None)  # every checkpoint name is overwritten in place: nothing to prune
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_epoch_trainer(build_parser(), argv, TRAINER)
