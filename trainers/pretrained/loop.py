"""Seed 003's training loop: the retrieval trainer's loop (ckptkit.training underneath) on a
text classifier, saving ``last_checkpoint/`` every ``save_steps`` batches and at each epoch's end
and ``best_model/`` when the validation F1 improves (see ckptkit.training.pretrained_layout).
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ckptkit.training import PRETRAINED, CheckpointManager, DataPosition, ProgressLine, ResumableSampler, ResumePoint, TrainingState
from ckptkit.training import pretrained_layout as keys
from trainers.lm.loop import resolve_precision
from trainers.pretrained.config import ClassifierConfig
from trainers.pretrained.data import synthetic_sequences
from trainers.pretrained.model import TinyTextClassifier, f1_and_accuracy
from trainers.retrieval.loop import RetrievalRun, RunOptions, TrainResult, lr_factor
from trainers.runtime import pick_device, seed_training_streams

TRAINER_NAME = "pretrained"
__all__ = ["PretrainedRun", "RunOptions", "TrainResult", "ClassifierRecord"]


@dataclass
class ClassifierRecord:
    """Seed 003's counters beside the data position."""

    global_step: int
    position: DataPosition
    best_f1: float = -1.0  # -1: not validated yet (the seed starts from 0.0; any F1 beats this)
    best_acc: float = 0.0
    last_f1: float | None = None  # this epoch's validation F1, for the best checkpoint's metric


class PretrainedRun(RetrievalRun):
    """All live objects of one run; ``run()`` (the retrieval loop's) trains to ``cfg.epochs``."""

    layout = PRETRAINED

    def __init__(self, cfg: ClassifierConfig, options: RunOptions, resume: ResumePoint | None = None) -> None:
        self.options = options
        self.device = pick_device(options.device)
        precision, self.notes = resolve_precision(cfg.precision, self.device)
        self.cfg = replace(cfg, precision=precision)
        self.data = synthetic_sequences(cfg)
        torch.manual_seed(cfg.seed)  # model init; the training streams get their own seed below
        self.model = TinyTextClassifier(self.cfg).to(self.device)
        seed_training_streams(cfg.seed)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        factor = functools.partial(lr_factor, warmup_steps=cfg.warmup_steps, decay=cfg.lr_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.sampler = ResumableSampler(self.data.num_train, cfg.batch_size, cfg.seed)
        self.stop_requested = False
        self.stop_signal: int | None = None
        self.record: ClassifierRecord = (self._restore(resume) if resume
                                         else ClassifierRecord(0, self.sampler.start_position(cfg.grad_accum)))
        stream = options.progress_stream if options.progress_stream is not None else sys.stdout
        self.display = ProgressLine(stream)

    def _micro_step(self, batch: Any) -> None:
        ids = batch.sample_ids
        tokens, labels = self.data.train_tokens[ids].to(self.device), self.data.train_labels[ids].to(self.device)
        with self._autocast():
            loss = F.cross_entropy(self.model(tokens).float(), labels)
        self.scaler.scale(loss / self.cfg.grad_accum).backward()
        self.record.position = self.record.position.advanced()

    def _after_batch(self, manager: CheckpointManager) -> list[Path]:
        """Seed 003's saves: at an epoch's end, and every ``save_steps`` batches inside one."""
        done = self.record.position.batch_in_epoch
        if done == 0:
            return self._end_epoch(manager)
        if done % self.cfg.save_steps == 0:
            self.record.last_f1 = None
            return manager.save(self._state(), ["periodic"])
        return []

    def _end_epoch(self, manager: CheckpointManager) -> list[Path]:
        r = self.record
        f1, acc = self.evaluate()
        kinds = ["best"] if f1 > r.best_f1 else []
        r.last_f1 = f1
        if kinds:
            r.best_f1, r.best_acc = f1, acc
        kinds.append("final" if r.position.epoch >= self.cfg.epochs else "periodic")
        best = " (best)" if "best" in kinds else ""
        self.log(f"epoch {r.position.epoch}/{self.cfg.epochs} COMPLETED | step {r.global_step} | val f1 {f1:.4f} | "
                 f"val acc {acc:.4f}{best} | lr {self.optimizer.param_groups[0]['lr']:.2e}")
        return manager.save(self._state(), kinds)

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:  # type: ignore[override]
        self.model.eval()
        with self._autocast():
            logits = self.model(self.data.val_tokens.to(self.device))
        self.model.train()
        return f1_and_accuracy(logits.argmax(dim=-1).cpu(), self.data.val_labels)

    def _state(self) -> TrainingState:
        r = self.record
        own = {keys.BEST_F1: max(r.best_f1, 0.0), keys.BEST_ACC: r.best_acc, keys.VAL_F1: r.last_f1,
               keys.MODEL_CONFIG: self.cfg.model_config()}
        return TrainingState(
            model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
            config=self.cfg.to_dict(), position=r.position, global_step=r.global_step,
            trainer=TRAINER_NAME, family_fields=own,
        )

    def _restore(self, resume: ResumePoint) -> ClassifierRecord:  # type: ignore[override]
        restored = resume.restore(self.model, self.optimizer, self.scheduler, self.scaler)
        ckpt = resume.checkpoint
        position = restored.position
        if position is None:  # the seed's own folder: epoch (1-based) and step (0 = end of epoch)
            step, epoch = int(ckpt.get(keys.STEP) or 0), int(ckpt[keys.EPOCH])
            start = self.sampler.start_position(self.cfg.grad_accum)
            position = replace(start, epoch=epoch if step == 0 else epoch - 1, batch_in_epoch=step)
            restored.warnings.append("no data_position: the batch order of the interrupted epoch is not the original's")
        else:
            restored.warnings += self.sampler.resume_warnings(position)
        self.notes += restored.warnings
        best_f1 = ckpt.get(keys.BEST_F1)
        return ClassifierRecord(
            global_step=int(ckpt.get("global_step", 0)), position=position,
            best_f1=float(best_f1) if best_f1 is not None and position.epoch > 0 else -1.0,
            best_acc=float(ckpt.get(keys.BEST_ACC) or 0.0),
        )
