"""Seed 003's training loop: trainers.epoch_run's loop on a text classifier, saving
``last_checkpoint/`` every ``save_steps`` batches and at each epoch's end and ``best_model/``
when the validation F1 improves (see ckptkit.training.pretrained_layout).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ckptkit.training import PRETRAINED, CheckpointManager, DataPosition
from ckptkit.training import pretrained_layout as keys
from trainers.epoch_run import EpochRecord, EpochRun, RunOptions, TrainResult
from trainers.pretrained.config import ClassifierConfig
from trainers.pretrained.data import synthetic_sequences
from trainers.pretrained.model import TinyTextClassifier, f1_and_accuracy

TRAINER_NAME = "pretrained"
__all__ = ["PretrainedRun", "RunOptions", "TrainResult", "ClassifierRecord"]


@dataclass
class ClassifierRecord(EpochRecord):
    """Seed 003's counters beside the data position."""

    best_f1: float = -1.0  # -1: not validated yet (the seed starts from 0.0; any F1 beats this)
    best_acc: float = 0.0
    last_f1: float | None = None  # this epoch's validation F1, for the best checkpoint's metric


class PretrainedRun(EpochRun):
    """All live objects of one run; ``run()`` trains to ``cfg.epochs``."""

    trainer_name = TRAINER_NAME
    layout = PRETRAINED
    record_type = ClassifierRecord
    epoch_heading = " COMPLETED"  # seed 003's log line
    lr_on_resume = False  # seed 003 has no --lr on resume: the checkpoint's learning rate stays
    cfg: ClassifierConfig

    def _build_data(self, cfg: ClassifierConfig) -> Any:
        return synthetic_sequences(cfg)

    def _build_model(self) -> torch.nn.Module:
        return TinyTextClassifier(self.cfg)

    def _batch_loss(self, sample_ids: Any) -> torch.Tensor:
        tokens, labels = self.data.train_tokens[sample_ids].to(self.device), self.data.train_labels[sample_ids].to(self.device)
        return F.cross_entropy(self.model(tokens).float(), labels)

    def _count_loss(self, loss: torch.Tensor) -> None:
        """Seed 003 logs no training loss, so none is summed (and none saved)."""

    def _after_batch(self, manager: CheckpointManager) -> list[Path]:
        """Seed 003's saves: at an epoch's end, and every ``save_steps`` batches inside one."""
        done = self.record.position.batch_in_epoch
        if done == 0:
            return self._end_epoch(manager)
        if done % self.cfg.save_steps == 0:
            self.record.last_f1 = None
            return manager.save(self._state(), ["periodic"])
        return []

    def _validate_epoch(self) -> tuple[str, bool]:
        r = self.record
        f1, acc = self.evaluate()
        improved = f1 > r.best_f1
        r.last_f1 = f1
        if improved:
            r.best_f1, r.best_acc = f1, acc
        return f"val f1 {f1:.4f} | val acc {acc:.4f}", improved

    def _epoch_end_kinds(self) -> list[str]:
        # one last_checkpoint/ folder: the final save is the epoch's periodic one
        return ["final" if self.record.position.epoch >= self.cfg.epochs else "periodic"]

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        self.model.eval()
        with self._autocast():
            logits = self.model(self.data.val_tokens.to(self.device))
        self.model.train()
        return f1_and_accuracy(logits.argmax(dim=-1).cpu(), self.data.val_labels)

    def _family_fields(self) -> dict[str, Any]:
        r = self.record
        return {keys.BEST_F1: max(r.best_f1, 0.0), keys.BEST_ACC: r.best_acc, keys.VAL_F1: r.last_f1,
                keys.MODEL_CONFIG: self.cfg.model_config()}

    def _seed_position(self, ckpt: Any) -> tuple[DataPosition, str]:
        # the seed's own folder: epoch (1-based) and step (0 = end of epoch)
        step, epoch = int(ckpt.get(keys.STEP) or 0), int(ckpt[keys.EPOCH])
        start = self.sampler.start_position(self.cfg.grad_accum)
        position = replace(start, epoch=epoch if step == 0 else epoch - 1, batch_in_epoch=step)
        return position, "no data_position: the batch order of the interrupted epoch is not the original's"

    def _record_from(self, ckpt: Any, global_step: int, position: DataPosition) -> ClassifierRecord:
        best_f1 = ckpt.get(keys.BEST_F1)
        return ClassifierRecord(
            global_step=int(ckpt.get("global_step", 0)), position=position,
            best_f1=float(best_f1) if best_f1 is not None and position.epoch > 0 else -1.0,
            best_acc=float(ckpt.get(keys.BEST_ACC) or 0.0),
        )
