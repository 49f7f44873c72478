"""The retrieval training loop: trainers.epoch_run's loop on seed 001's two-tower model.

At each epoch's end: Recall@10 on the held-out split, then the seed's checkpoints (periodic,
best by Recall@10, final); see ckptkit.training.retrieval_layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ckptkit.training import RETRIEVAL, DataPosition
from ckptkit.training import retrieval_layout as keys
from trainers.epoch_run import EpochRecord
from trainers.epoch_run import EpochRun, RunOptions, TrainResult, lr_factor
from trainers.retrieval.config import RetrievalConfig
from trainers.retrieval.data import synthetic_interactions
from trainers.retrieval.model import TwoTower

TRAINER_NAME = "retrieval"
__all__ = ["RetrievalRun", "RunOptions", "TrainResult", "RetrievalRecord", "lr_factor"]


@dataclass
class RetrievalRecord(EpochRecord):
    """Seed 001's own counters beside the data position."""

    train_losses: list[float] = field(default_factory=list)
    val_recalls: list[float] = field(default_factory=list)
    epoch_loss_sum: float = 0.0  # losses of this epoch's batches so far

    @property
    def best_recall(self) -> float:
        return max(self.val_recalls, default=-1.0)


class RetrievalRun(EpochRun):
    """All live objects of one run; ``run()`` trains until ``cfg.epochs`` or an interrupt."""

    trainer_name = TRAINER_NAME
    layout = RETRIEVAL
    record_type = RetrievalRecord
    cfg: RetrievalConfig

    def _build_data(self, cfg: RetrievalConfig) -> Any:
        return synthetic_interactions(cfg)

    def _build_model(self) -> torch.nn.Module:
        return TwoTower(self.cfg)

    def _batch_loss(self, sample_ids: Any) -> torch.Tensor:
        users, items = (t.to(self.device) for t in self.data.batch(sample_ids))
        return self.model(users, items)

    def _validate_epoch(self) -> tuple[str, bool]:
        r = self.record
        loss = self._take_epoch_loss()
        recall = self.evaluate()
        improved = recall > r.best_recall
        r.train_losses.append(loss)
        r.val_recalls.append(recall)
        return f"loss {loss:.4f} | recall@10 {recall:.4f}", improved

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        with self._autocast():
            recall = self.model.recall_at(self.data.val_users.to(self.device), self.data.val_items.to(self.device), k=10)
        self.model.train()
        return recall

    def _family_fields(self) -> dict[str, Any]:
        r = self.record
        return {
            keys.LOSS: r.train_losses[-1] if r.train_losses else None,
            keys.RECALL: r.val_recalls[-1] if r.val_recalls else None,
            keys.TRAIN_LOSSES: r.train_losses, keys.VAL_RECALLS: r.val_recalls,
            keys.EPOCH_LOSS_SUM: r.epoch_loss_sum,
        }

    def _seed_position(self, ckpt: Any) -> tuple[DataPosition, str]:
        # the seed's own trainer stores 'epoch' as the number of epochs completed
        position = replace(self.sampler.start_position(self.cfg.grad_accum), epoch=int(ckpt[keys.EPOCH]))
        return position, "no data_position: continuing at the start of the next epoch"

    def _record_from(self, ckpt: Any, global_step: int, position: DataPosition) -> RetrievalRecord:
        return RetrievalRecord(
            global_step=global_step, position=position,
            train_losses=[float(x) for x in ckpt.get(keys.TRAIN_LOSSES) or []],
            val_recalls=[float(x) for x in ckpt.get(keys.VAL_RECALLS) or []],
            epoch_loss_sum=float(ckpt.get(keys.EPOCH_LOSS_SUM, 0.0)),
        )
