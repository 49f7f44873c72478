"""The retrieval training loop, on ckptkit.training: sampler, checkpoint manager, exact resume.

One optimizer step = ``grad_accum`` micro-batches (accumulation windows run across epoch ends,
see ckptkit.training.sampler). At each epoch's end: Recall@10 on the held-out split, then the
seed's checkpoints (periodic, best by Recall@10, final). After each micro-batch the run may be
killed (``kill_at_micro_step``: SIGKILL, a real crash) or stopped (``stop_at_micro_step``,
SIGTERM, SIGINT: an interrupt checkpoint at that exact batch, then a clean exit).
"""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ckptkit.training import RETRIEVAL, CheckpointManager, DataPosition, ProgressLine, ResumableSampler, ResumePoint, TrainingState
from ckptkit.training import retrieval_layout as keys
from trainers.lm.loop import resolve_precision
from trainers.retrieval.config import RetrievalConfig
from trainers.retrieval.data import synthetic_interactions
from trainers.retrieval.model import TwoTower
from trainers.runtime import autocast, pick_device, seed_training_streams, set_peak_lr

TRAINER_NAME = "retrieval"


@dataclass
class RunOptions:
    out: Path
    keep_last: int | None = 3
    device: str = "auto"  # auto | cpu | cuda
    asynchronous_save: bool = True
    kill_at_micro_step: int | None = None  # SIGKILL this process right after that many batches
    stop_at_micro_step: int | None = None  # interrupt there: save, then return
    progress_stream: Any = None  # default sys.stdout; the line is drawn only on a TTY


@dataclass
class EpochRecord:
    """What the run knows beyond the data position: seed 001's own counters."""

    global_step: int
    position: DataPosition
    train_losses: list[float] = field(default_factory=list)
    val_recalls: list[float] = field(default_factory=list)
    epoch_loss_sum: float = 0.0  # losses of this epoch's batches so far

    @property
    def best_recall(self) -> float:
        return max(self.val_recalls, default=-1.0)


@dataclass
class TrainResult:
    status: str  # "finished" | "interrupted"
    record: EpochRecord
    checkpoints: list[Path]


def lr_factor(step: int, warmup_steps: int, decay: float) -> float:
    """Linear warmup, then exponential decay per step: no dependence on the epoch budget, so
    a run extended with --epochs keeps the schedule it had."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return decay ** (step - warmup_steps)


class RetrievalRun:
    """All live objects of one run; ``run()`` trains until ``cfg.epochs`` or an interrupt."""

    layout = RETRIEVAL  # the checkpoint layout ``run()`` saves in (seed 003's trainer reuses the loop)

    def __init__(self, cfg: RetrievalConfig, options: RunOptions, resume: ResumePoint | None = None) -> None:
        self.options = options
        self.device = pick_device(options.device)
        precision, self.notes = resolve_precision(cfg.precision, self.device)
        self.cfg = replace(cfg, precision=precision)
        self.data = synthetic_interactions(cfg)
        torch.manual_seed(cfg.seed)  # model init; the training streams get their own seed below
        self.model = TwoTower(self.cfg).to(self.device)
        seed_training_streams(cfg.seed)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
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
        with CheckpointManager(self.options.out, keep_last=self.options.keep_last, layout=self.layout,
                               asynchronous=self.options.asynchronous_save) as manager:
            for leftover in manager.removed_leftovers:
                self.log(f"removed {leftover.name}: the unfinished write of a crashed save (the checkpoint it was to replace is intact)")
            batches = self.sampler.iterate_from(r.position)
            while r.position.epoch < self.cfg.epochs:
                self._micro_step(next(batches))
                if r.position.micro_step == 0:
                    self._optimizer_step()
                saved += self._after_batch(manager)
                self.display.update(r.position, r.global_step, self.max_steps)
                self._maybe_kill()
                if self._should_stop():
                    saved += manager.save(self._state(), ["interrupt"])
                    status = "interrupted"
                    break
        self.display.close()
        return TrainResult(status, r, saved)

    def _micro_step(self, batch: Any) -> None:
        users, items = (t.to(self.device) for t in self.data.batch(batch.sample_ids))
        with self._autocast():
            loss = self.model(users, items)
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

    def _after_batch(self, manager: CheckpointManager) -> list[Path]:
        """The checkpoints due after a batch: seed 001 saves at epoch ends only."""
        return self._end_epoch(manager) if self.record.position.batch_in_epoch == 0 else []

    def _end_epoch(self, manager: CheckpointManager) -> list[Path]:
        r = self.record
        loss = r.epoch_loss_sum / self.sampler.steps_per_epoch
        r.epoch_loss_sum = 0.0
        recall = self.evaluate()
        kinds = ["best"] if recall > r.best_recall else []
        r.train_losses.append(loss)
        r.val_recalls.append(recall)
        kinds.append("periodic")
        if r.position.epoch >= self.cfg.epochs:
            kinds.append("final")
        best = " (best)" if "best" in kinds else ""
        self.log(f"epoch {r.position.epoch}/{self.cfg.epochs} | step {r.global_step} | loss {loss:.4f} | "
                 f"recall@10 {recall:.4f}{best} | lr {self.optimizer.param_groups[0]['lr']:.2e}")
        return manager.save(self._state(), kinds)

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        with self._autocast():
            recall = self.model.recall_at(self.data.val_users.to(self.device), self.data.val_items.to(self.device), k=10)
        self.model.train()
        return recall

    def _state(self) -> TrainingState:
        r = self.record
        own = {
            keys.LOSS: r.train_losses[-1] if r.train_losses else None,
            keys.RECALL: r.val_recalls[-1] if r.val_recalls else None,
            keys.TRAIN_LOSSES: r.train_losses, keys.VAL_RECALLS: r.val_recalls,
            keys.EPOCH_LOSS_SUM: r.epoch_loss_sum,
        }
        return TrainingState(
            model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            config=self.cfg.to_dict(), position=r.position, global_step=r.global_step,
            trainer=TRAINER_NAME, family_fields=own,
        )

    def _restore(self, resume: ResumePoint) -> EpochRecord:
        restored = resume.restore(self.model, self.optimizer, self.scheduler, self.scaler)
        ckpt = resume.checkpoint
        position = restored.position
        if position is None:  # a checkpoint of the seed's own trainer: its 'epoch' is epochs completed
            position = replace(self.sampler.start_position(self.cfg.grad_accum), epoch=int(ckpt[keys.EPOCH]))
            restored.warnings.append("no data_position: continuing at the start of the next epoch")
        else:
            restored.warnings += self.sampler.resume_warnings(position)
        self.notes += restored.warnings
        if resume.config.get("learning_rate", self.cfg.learning_rate) != self.cfg.learning_rate:
            lr, step = self.cfg.learning_rate, self.scheduler.last_epoch
            set_peak_lr(self.optimizer, self.scheduler, lr, lr_factor(step, self.cfg.warmup_steps, self.cfg.lr_decay))
        return EpochRecord(
            global_step=restored.global_step, position=position,
            train_losses=[float(x) for x in ckpt.get(keys.TRAIN_LOSSES) or []],
            val_recalls=[float(x) for x in ckpt.get(keys.VAL_RECALLS) or []],
            epoch_loss_sum=float(ckpt.get(keys.EPOCH_LOSS_SUM, 0.0)),
        )

    def _maybe_kill(self) -> None:
        if self.options.kill_at_micro_step == self.record.position.batches_consumed:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def _should_stop(self) -> bool:
        target = self.options.stop_at_micro_step
        return self.stop_requested or (target is not None and self.record.position.batches_consumed >= target)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.cfg.precision, self.device)

