"""The loop the epoch-based trainers (retrieval, recsys, pretrained) share, on ckptkit.training:
sampler, checkpoint manager, exact resume.

One optimizer step = ``grad_accum`` micro-batches (accumulation windows run across epoch ends,
see ckptkit.training.sampler). At each epoch's end: the family's validation metric, then its
checkpoints. After each micro-batch the run may be killed (``kill_at_micro_step``: SIGKILL, a
real crash) or stopped (``stop_at_micro_step``, SIGTERM, SIGINT: an interrupt checkpoint at that
exact batch, then a clean exit).

What a family adds are the hooks below (data, model, loss, validation, its own checkpoint fields
and the position its seed's own checkpoints imply); the order of construction in ``__init__`` is
fixed here because the RNG streams, and so every checkpoint byte, depend on it.
"""
from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from ckptkit.training import CheckpointManager, DataPosition, ProgressLine, ResumableSampler, ResumePoint, TrainingState
from ckptkit.training.layout import CheckpointLayout
from trainers.lm.loop import resolve_precision
from trainers.runtime import RunOptions, autocast, kill_if_at, pick_device, seed_training_streams, set_peak_lr


@dataclass
class EpochRecord:
    """What every run knows beyond its live objects; families add their own counters."""

    global_step: int
    position: DataPosition


@dataclass
class TrainResult:
    status: str  # "finished" | "interrupted"
    record: Any  # the family's EpochRecord subclass
    checkpoints: list[Path]


def lr_factor(step: int, warmup_steps: int, decay: float) -> float:
    """Linear warmup, then exponential decay per step: no dependence on the epoch budget, so
    a run extended with --epochs keeps the schedule it had."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return decay ** (step - warmup_steps)


class EpochRun:
    """All live objects of one run; ``run()`` trains until ``cfg.epochs`` or an interrupt."""

    trainer_name: ClassVar[str]
    layout: ClassVar[CheckpointLayout]
    record_type: ClassVar[type[EpochRecord]]
    optimizer_type: ClassVar[type[torch.optim.Optimizer]] = torch.optim.AdamW
    prunes: ClassVar[bool] = True  # False: every name is overwritten in place, keep_last means nothing
    epoch_heading: ClassVar[str] = ""  # after "epoch E/N" in the epoch's log line
    lr_on_resume: ClassVar[bool] = True  # whether a resume may set a new peak learning rate (--lr)

    def __init__(self, cfg: Any, options: RunOptions, resume: ResumePoint | None = None) -> None:
        self.options = options
        self.device = pick_device(options.device)
        precision, self.notes = resolve_precision(cfg.precision, self.device)
        self.cfg = replace(cfg, precision=precision)
        self.data = self._build_data(cfg)
        torch.manual_seed(cfg.seed)  # model init; the training streams get their own seed below
        self.model = self._build_model().to(self.device)
        seed_training_streams(cfg.seed)
        self.optimizer = self.optimizer_type(self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        factor = functools.partial(lr_factor, warmup_steps=cfg.warmup_steps, decay=cfg.lr_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.sampler = ResumableSampler(self.data.num_train, cfg.batch_size, cfg.seed)
        self.stop_requested = False
        self.stop_signal: int | None = None
        self.record: Any = self._restore(resume) if resume else self.record_type(0, self.sampler.start_position(cfg.grad_accum))
        stream = options.progress_stream if options.progress_stream is not None else sys.stdout
        self.display = ProgressLine(stream)

    # -- what a family provides ------------------------------------------------------------

    def _build_data(self, cfg: Any) -> Any:
        raise NotImplementedError

    def _build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def _batch_loss(self, sample_ids: Any) -> torch.Tensor:
        """The loss of one micro-batch, computed under the run's autocast."""
        raise NotImplementedError

    def _validate_epoch(self) -> tuple[str, bool]:
        """Validate at an epoch's end and update the record: the metrics for the log line, and
        whether they are the best so far (a 'best' checkpoint)."""
        raise NotImplementedError

    def _family_fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def _seed_position(self, ckpt: Any) -> tuple[DataPosition, str]:
        """Where a checkpoint without a data_position (the seed's own trainer's) continues, and
        the warning that says what is lost."""
        raise NotImplementedError

    def _record_from(self, ckpt: Any, global_step: int, position: DataPosition) -> Any:
        raise NotImplementedError

    def _count_loss(self, loss: torch.Tensor) -> None:
        """Keeps the epoch's loss sum (saved, so a resumed epoch reports the whole epoch's loss)."""
        self.record.epoch_loss_sum += loss.item()

    def _epoch_end_kinds(self) -> list[str]:
        kinds = ["periodic"]
        if self.record.position.epoch >= self.cfg.epochs:
            kinds.append("final")
        return kinds

    def _after_batch(self, manager: CheckpointManager) -> list[Path]:
        """The checkpoints due after a batch: by default at epoch ends only."""
        return self._end_epoch(manager) if self.record.position.batch_in_epoch == 0 else []

    # -- the loop --------------------------------------------------------------------------

    @property
    def max_steps(self) -> int:
        return self.cfg.epochs * self.sampler.steps_per_epoch // self.cfg.grad_accum

    def log(self, text: str) -> None:
        self.display.message(text)

    def run(self) -> TrainResult:
        r = self.record
        saved: list[Path] = []
        status = "finished"
        keep_last = self.options.keep_last if self.prunes else None
        with CheckpointManager(self.options.out, keep_last=keep_last, layout=self.layout,
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
        with self._autocast():
            loss = self._batch_loss(batch.sample_ids)
        self.scaler.scale(loss / self.cfg.grad_accum).backward()
        self._count_loss(loss)
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
        metrics, improved = self._validate_epoch()
        kinds = (["best"] if improved else []) + self._epoch_end_kinds()
        best = " (best)" if improved else ""
        self.log(f"epoch {r.position.epoch}/{self.cfg.epochs}{self.epoch_heading} | step {r.global_step} | "
                 f"{metrics}{best} | lr {self.optimizer.param_groups[0]['lr']:.2e}")
        return manager.save(self._state(), kinds)

    def _take_epoch_loss(self) -> float:
        """The finished epoch's mean batch loss; the sum starts over for the next epoch."""
        loss = self.record.epoch_loss_sum / self.sampler.steps_per_epoch
        self.record.epoch_loss_sum = 0.0
        return loss

    def _state(self) -> TrainingState:
        r = self.record
        return TrainingState(
            model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            config=self.cfg.to_dict(), position=r.position, global_step=r.global_step,
            trainer=self.trainer_name, family_fields=self._family_fields(),
        )

    def _restore(self, resume: ResumePoint) -> Any:
        restored = resume.restore(self.model, self.optimizer, self.scheduler, self.scaler)
        position = restored.position
        if position is None:
            position, warning = self._seed_position(resume.checkpoint)
            restored.warnings.append(warning)
        else:
            restored.warnings += self.sampler.resume_warnings(position)
        self.notes += restored.warnings
        if self.lr_on_resume and resume.config.get("learning_rate", self.cfg.learning_rate) != self.cfg.learning_rate:
            lr, step = self.cfg.learning_rate, self.scheduler.last_epoch
            set_peak_lr(self.optimizer, self.scheduler, lr, lr_factor(step, self.cfg.warmup_steps, self.cfg.lr_decay))
        return self._record_from(resume.checkpoint, restored.global_step, position)

    def _maybe_kill(self) -> None:
        kill_if_at(self.options, self.record.position.batches_consumed)

    def _should_stop(self) -> bool:
        target = self.options.stop_at_micro_step
        return self.stop_requested or (target is not None and self.record.position.batches_consumed >= target)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.cfg.precision, self.device)
