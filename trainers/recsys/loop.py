"""The recsys training loop, on ckptkit.training: sampler, checkpoint manager, exact resume.

One optimizer step = ``grad_accum`` micro-batches (accumulation windows run across epoch ends,
see ckptkit.training.sampler). At each epoch's end: validation accuracy, then seed 000's
checkpoints (``checkpoint-recent.pth``, ``best_acc_model.pth`` when accuracy improved,
``checkpoint-recent.pth.final`` after the last epoch). After each micro-batch the run may be
killed (``kill_at_micro_step``: SIGKILL, a real crash) or stopped (``stop_at_micro_step``,
SIGTERM, SIGINT: an interrupt checkpoint at that exact batch, then a clean exit).
"""
from __future__ import annotations

import functools
import math
import os
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ckptkit.training import RECSYS, CheckpointManager, DataPosition, ProgressLine, ResumableSampler, ResumePoint, TrainingState
from ckptkit.training import recsys_layout as keys
from trainers.lm.loop import resolve_precision
from trainers.recsys.config import RecsysConfig
from trainers.recsys.data import synthetic_sequences
from trainers.recsys.model import SequentialRecommender
from trainers.retrieval.loop import lr_factor
from trainers.runtime import autocast, pick_device, seed_training_streams, set_peak_lr

TRAINER_NAME = "recsys"


@dataclass
class RunOptions:
    out: Path
    device: str = "auto"  # auto | cpu | cuda
    asynchronous_save: bool = True
    kill_at_micro_step: int | None = None  # SIGKILL this process right after that many batches
    stop_at_micro_step: int | None = None  # interrupt there: save, then return
    progress_stream: Any = None  # default sys.stdout; the line is drawn only on a TTY


@dataclass
class EpochRecord:
    """What the run knows beyond the data position: seed 000's metric."""

    global_step: int
    position: DataPosition
    accuracy: float | None = None  # the last finished epoch's
    best_acc: float = -math.inf
    epoch_loss_sum: float = 0.0  # losses of this epoch's batches so far


@dataclass
class TrainResult:
    status: str  # "finished" | "interrupted"
    record: EpochRecord
    checkpoints: list[Path]


class RecsysRun:
    """All live objects of one run; ``run()`` trains until ``cfg.epochs`` or an interrupt."""

    def __init__(self, cfg: RecsysConfig, options: RunOptions, resume: ResumePoint | None = None) -> None:
        self.options = options
        self.device = pick_device(options.device)
        precision, self.notes = resolve_precision(cfg.precision, self.device)
        self.cfg = replace(cfg, precision=precision)
        self.data = synthetic_sequences(cfg)
        torch.manual_seed(cfg.seed)  # model init; the training streams get their own seed below
        self.model = SequentialRecommender(self.cfg).to(self.device)
        seed_training_streams(cfg.seed)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        factor = functools.partial(lr_factor, warmup_steps=cfg.warmup_steps, decay=cfg.lr_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.sampler = ResumableSampler(self.data.num_train, cfg.batch_size, cfg.seed)
        self.stop_requested = False
        self.stop_signal: int | None = None
        self.record = self._restore(resume) if resume else EpochRecord(0, self.sampler.start_position(cfg.grad_accum))
        stream = options.progress_stream if options.progress_stream is not None else sys.stdout
        self.display = ProgressLine(stream)

    @property
    def max_steps(self) -> int:
        return self.cfg.epochs * self.sampler.steps_per_epoch // self.cfg.grad_accum

    def log(self, text: str) -> None:
        self.display.message(text)

    def run(self) -> TrainResult:
        r = self.record
        saved: list[Path] = []
        status = "finished"
        # keep_last=None: every name is overwritten in place, there is nothing to prune
        with CheckpointManager(self.options.out, keep_last=None, layout=RECSYS,
                               asynchronous=self.options.asynchronous_save) as manager:
            for leftover in manager.removed_leftovers:
                self.log(f"removed {leftover.name}: the unfinished write of a crashed save (the checkpoint it was to replace is intact)")
            batches = self.sampler.iterate_from(r.position)
            while r.position.epoch < self.cfg.epochs:
                self._micro_step(next(batches))
                if r.position.micro_step == 0:
                    self._optimizer_step()
                if r.position.batch_in_epoch == 0:
                    saved += self._end_epoch(manager)
                self.display.update(r.position, r.global_step, self.max_steps)
                self._maybe_kill()
                if self._should_stop():
                    saved += manager.save(self._state(), ["interrupt"])
                    status = "interrupted"
                    break
        self.display.close()
        return TrainResult(status, r, saved)

    def _micro_step(self, batch: Any) -> None:
        windows, targets = (t.to(self.device) for t in self.data.batch(batch.sample_ids))
        with autocast(self.cfg.precision, self.device):
            loss = self.model(windows, targets)
        self.scaler.scale(loss / self.cfg.grad_accum).backward()
        self.record.epoch_loss_sum += loss.item()
        self.record.position = self.record.position.advanced()

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.record.global_step += 1

    def _end_epoch(self, manager: CheckpointManager) -> list[Path]:
        r = self.record
        loss = r.epoch_loss_sum / self.sampler.steps_per_epoch
        r.epoch_loss_sum = 0.0
        r.accuracy = self.evaluate()
        kinds = ["periodic"]
        if r.accuracy > r.best_acc:
            r.best_acc = r.accuracy
            kinds.insert(0, "best")
        if r.position.epoch >= self.cfg.epochs:
            kinds.append("final")
        best = " (best)" if "best" in kinds else ""
        self.log(f"epoch {r.position.epoch}/{self.cfg.epochs} | step {r.global_step} | loss {loss:.4f} | "
                 f"acc {r.accuracy:.4f}{best} | lr {self.optimizer.param_groups[0]['lr']:.2e}")
        return manager.save(self._state(), kinds)

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        with autocast(self.cfg.precision, self.device):
            accuracy = self.model.accuracy(self.data.val_windows.to(self.device), self.data.val_targets.to(self.device))
        self.model.train()
        return accuracy

    def _state(self) -> TrainingState:
        r = self.record
        own = {keys.ACCURACY: r.accuracy, keys.BEST_ACC: r.best_acc if math.isfinite(r.best_acc) else None,
               keys.EPOCH_LOSS_SUM: r.epoch_loss_sum}
        return TrainingState(
            model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            config=self.cfg.to_dict(), position=r.position, global_step=r.global_step,
            trainer=TRAINER_NAME, family_fields=own,
        )

    def _restore(self, resume: ResumePoint) -> EpochRecord:
        restored = resume.restore(self.model, self.optimizer, self.scheduler, self.scaler)
        ckpt = resume.checkpoint
        position = restored.position
        if position is None:  # a checkpoint of the seed's own trainer: 'epoch' is the last finished epoch
            position = replace(self.sampler.start_position(self.cfg.grad_accum), epoch=int(ckpt[keys.EPOCH]) + 1)
            restored.warnings.append("no data_position: continuing at the start of the next epoch")
        else:
            restored.warnings += self.sampler.resume_warnings(position)
        self.notes += restored.warnings
        if resume.config.get("learning_rate", self.cfg.learning_rate) != self.cfg.learning_rate:
            lr, step = self.cfg.learning_rate, self.scheduler.last_epoch
            set_peak_lr(self.optimizer, self.scheduler, lr, lr_factor(step, self.cfg.warmup_steps, self.cfg.lr_decay))
        best = ckpt.get(keys.BEST_ACC)
        accuracy = ckpt.get(keys.ACCURACY)
        return EpochRecord(
            global_step=restored.global_step, position=position,
            accuracy=None if accuracy is None else float(accuracy),
            best_acc=-math.inf if best is None else float(best),
            epoch_loss_sum=float(ckpt.get(keys.EPOCH_LOSS_SUM, 0.0)),
        )

    def _maybe_kill(self) -> None:
        if self.options.kill_at_micro_step == self.record.position.batches_consumed:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def _should_stop(self) -> bool:
        target = self.options.stop_at_micro_step
        return self.stop_requested or (target is not None and self.record.position.batches_consumed >= target)
