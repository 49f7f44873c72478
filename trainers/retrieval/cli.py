"""Command line of the retrieval trainer: seed 001's flags and messages on the epoch trainers'
shared start/resume flow (trainers.epoch_resume)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from trainers.epoch_resume import EpochTrainer, add_run_flags, run_epoch_trainer
from trainers.epoch_run import TrainResult
from trainers.retrieval.config import DEFAULT_PRESET, PRESETS, RetrievalConfig
from trainers.retrieval.loop import TRAINER_NAME, RetrievalRun


def _saved(result: TrainResult, out: Path) -> str:
    return ", ".join(p.name for p in result.checkpoints)


def _finished(result: TrainResult, out: Path) -> str:
    final = [p.name for p in result.checkpoints if p.name.startswith("final_")]
    return (f"finished: {result.record.position.epoch} epochs, step {result.record.global_step}; final checkpoint "
            f"{out / final[-1] if final else out}")


TRAINER = EpochTrainer(
    name=TRAINER_NAME, config_type=RetrievalConfig, presets=PRESETS, default_preset=DEFAULT_PRESET,
    run_type=RetrievalRun, saved_text=_saved, finished_text=_finished,
    default_out=Path("runs/retrieval"),
    describe=lambda cfg: f"{cfg.num_users} users, {cfg.num_items} items, {cfg.epochs} epochs",
    # flag name -> RetrievalConfig field (seed 001's names: --batch, --gradient-accumulation)
    config_flags={"batch": "batch_size", "gradient_accumulation": "grad_accum", "lr": "learning_rate",
                  "seed": "seed", "precision": "precision", "epochs": "epochs"},
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainers.retrieval",
                                     description="Two-tower retrieval model on built-in synthetic interactions.")
    parser.add_argument("--config", choices=sorted(PRESETS), help=f"model/data preset (default {DEFAULT_PRESET})")
    parser.add_argument("--batch", type=int, help="batch size (seed 001's default 64)")
    parser.add_argument("--epochs", type=int, help="total epochs; on resume, raise it to train further")
    parser.add_argument("--gradient-accumulation", type=int, help="batches per optimizer step (default 2)")
    parser.add_argument("--mixed-precision", action="store_const", const="fp16", dest="precision",
                        help="fp16 autocast with a GradScaler (CUDA), as seed 001; its state is saved")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--lr", type=float, help="peak learning rate; on resume, the new peak from the next step on")
    parser.add_argument("--seed", type=int, help="seed for data, init and sampling order")
    parser.add_argument("--out", type=Path, help="run directory (default runs/retrieval; on resume: the checkpoint's run)")
    parser.add_argument("--resume", type=Path, metavar="PATH|RUN_DIR", help="checkpoint, or run directory (newest valid)")
    parser.add_argument("--keep-last", type=int, default=3, help="epoch checkpoints to keep (best and newest always kept)")
    add_run_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_epoch_trainer(build_parser(), argv, TRAINER)
