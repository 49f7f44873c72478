"""The recsys training loop: trainers.epoch_run's loop on seed 000's sequential recommender.

At each epoch's end: validation accuracy, then seed 000's checkpoints (``checkpoint-recent.pth``,
``best_acc_model.pth`` when accuracy improved, ``checkpoint-recent.pth.final`` after the last
epoch); see ckptkit.training.recsys_layout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from ckptkit.training import RECSYS, DataPosition
from ckptkit.training import recsys_layout as keys
from trainers.epoch_run import EpochRecord
from trainers.epoch_run import EpochRun, RunOptions, TrainResult
from trainers.recsys.config import RecsysConfig
from trainers.recsys.data import synthetic_sequences
from trainers.recsys.model import SequentialRecommender

TRAINER_NAME = "recsys"
__all__ = ["RecsysRun", "RunOptions", "TrainResult", "RecsysRecord"]


@dataclass
class RecsysRecord(EpochRecord):
    """Seed 000's metric beside the data position."""

    accuracy: float | None = None  # the last finished epoch's
    best_acc: float = -math.inf
    epoch_loss_sum: float = 0.0  # losses of this epoch's batches so far


class RecsysRun(EpochRun):
    """All live objects of one run; ``run()`` trains until ``cfg.epochs`` or an interrupt."""

    trainer_name = TRAINER_NAME
    layout = RECSYS
    record_type = RecsysRecord
    optimizer_type = torch.optim.Adam  # seed 000's
    prunes = False  # every name is overwritten in place, there is nothing to prune
    cfg: RecsysConfig

    def _build_data(self, cfg: RecsysConfig) -> Any:
        return synthetic_sequences(cfg)

    def _build_model(self) -> torch.nn.Module:
        return SequentialRecommender(self.cfg)

    def _batch_loss(self, sample_ids: Any) -> torch.Tensor:
        windows, targets = (t.to(self.device) for t in self.data.batch(sample_ids))
        return self.model(windows, targets)

    def _validate_epoch(self) -> tuple[str, bool]:
        r = self.record
        loss = self._take_epoch_loss()
        r.accuracy = self.evaluate()
        improved = r.accuracy > r.best_acc
        if improved:
            r.best_acc = r.accuracy
        return f"loss {loss:.4f} | acc {r.accuracy:.4f}", improved

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        with self._autocast():
            accuracy = self.model.accuracy(self.data.val_windows.to(self.device), self.data.val_targets.to(self.device))
        self.model.train()
        return accuracy

    def _family_fields(self) -> dict[str, Any]:
        r = self.record
        return {keys.ACCURACY: r.accuracy, keys.BEST_ACC: r.best_acc if math.isfinite(r.best_acc) else None,
                keys.EPOCH_LOSS_SUM: r.epoch_loss_sum}

    def _seed_position(self, ckpt: Any) -> tuple[DataPosition, str]:
        # LlamaRec stores 'epoch' = epochs finished (ckptkit.families.llamarec)
        position = replace(self.sampler.start_position(self.cfg.grad_accum), epoch=int(ckpt[keys.EPOCH]))
        return position, "no data_position: continuing at the start of the next epoch"

    def _record_from(self, ckpt: Any, global_step: int, position: DataPosition) -> RecsysRecord:
        best = ckpt.get(keys.BEST_ACC)
        accuracy = ckpt.get(keys.ACCURACY)
        return RecsysRecord(
            global_step=global_step, position=position,
            accuracy=None if accuracy is None else float(accuracy),
            best_acc=-math.inf if best is None else float(best),
            epoch_loss_sum=float(ckpt.get(keys.EPOCH_LOSS_SUM, 0.0)),
        )
