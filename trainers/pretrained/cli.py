"""Command line of seed 003's classifier trainer: its flags and messages on the epoch trainers'
shared start/resume flow (trainers.epoch_resume); what differs is the config, the flags a resume
may change and the folders it names."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from trainers.epoch_resume import EpochTrainer, add_run_flags, run_epoch_trainer
from trainers.epoch_run import TrainResult
from trainers.pretrained.config import DEFAULT_PRESET, PRESETS, ClassifierConfig
from trainers.pretrained.loop import TRAINER_NAME, PretrainedRun


def _saved(result: TrainResult, out: Path) -> str:
    return str(out / "last_checkpoint")


def _finished(result: TrainResult, out: Path) -> str:
    return (f"finished: {result.record.position.epoch} epochs, step {result.record.global_step}; best val f1 "
            f"{result.record.best_f1:.4f}; model in {out / 'last_checkpoint'}")


TRAINER = EpochTrainer(
    name=TRAINER_NAME, config_type=ClassifierConfig, presets=PRESETS, default_preset=DEFAULT_PRESET,
    run_type=PretrainedRun, saved_text=_saved, finished_text=_finished,
    default_out=Path("runs/pretrained"),
    describe=lambda cfg: f"{cfg.num_train} sequences, {cfg.epochs} epochs",
    config_flags={"batch_size": "batch_size", "gradient_accumulation": "grad_accum", "lr": "learning_rate",
                  "seed": "seed", "precision": "precision", "epochs": "epochs", "save_steps": "save_steps"},
    label="classifier",
    # on resume; the rest would make the run another run (seed 003 has no --lr on resume)
    changes={"epochs": "--epochs {value} from here on (the run had {old})",
             "save_steps": "--save-steps {value} from here on (the run had {old})"},
    checkpoint_is_folder=True,  # a checkpoint is a folder inside its run directory
)


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
    add_run_flags(parser)
    parser.set_defaults(keep_last=None)  # one last_checkpoint/ is replaced in place: nothing to prune
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_epoch_trainer(build_parser(), argv, TRAINER)
