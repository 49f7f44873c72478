"""The fashion recommender's checkpoint layout (the fashion retrieval system), as ckptkit's manager writes it.

File names, as the seed's trainer names them::

    optimized_model_epoch_{E}_recall_{R:.4f}.pt          # periodic: at the end of every epoch
    best_optimized_model_recall_{R:.4f}.pt               # best Recall@10 so far (older ones pruned)
    final_optimized_model_epoch_{E}_recall_{R:.4f}.pt    # the last epoch
    interrupted_model_epoch_{E}_batch_{B}.pt             # ckptkit's: an interrupt inside epoch E+1

``E`` is epochs completed (the seed stores ``epoch + 1`` for the 0-based epoch just finished)
and ``R`` that epoch's Recall@10. The seed's keys: ``epoch`` (= E), ``model_state_dict``,
``optimizer_state_dict``, ``scheduler_state_dict``, ``loss`` (the epoch's mean training loss),
``recall_at_10``, ``train_losses``, ``val_recalls`` (one entry per epoch). ckptkit adds
``global_step``, ``config`` and the extras every layout has (see :mod:`ckptkit.training.layout`),
among them ``scaler_state_dict``, which the seed's trainer never saved. A checkpoint taken
inside an epoch keeps the last finished epoch's ``loss`` and ``recall_at_10`` and adds
``epoch_loss_sum`` (the losses of the epoch's batches so far), so the epoch's mean is exact.
"""
from __future__ import annotations

import re
from typing import Any

from ckptkit.training.layout import (
    CONFIG,
    EPOCH,
    GLOBAL_STEP,
    MODEL,
    OPTIMIZER,
    CheckpointLayout,
    TrainingState,
    register_layout,
)

LOSS = "loss"
RECALL = "recall_at_10"
TRAIN_LOSSES = "train_losses"
VAL_RECALLS = "val_recalls"
EPOCH_LOSS_SUM = "epoch_loss_sum"
_NAME_RE = re.compile(
    r"^(?:best_optimized_model_recall_\d+\.\d+|(?:final_)?optimized_model_epoch_\d+_recall_\d+\.\d+"
    r"|interrupted_model_epoch_\d+_batch_\d+)\.pt$"
)


def _name(kind: str, state: TrainingState, sharded: bool) -> str:
    if sharded:
        raise ValueError("the retrieval layout has no sharded form")
    epochs, recall = state.position.epoch, state.family_fields.get(RECALL)
    if kind == "interrupt":
        return f"interrupted_model_epoch_{epochs}_batch_{state.position.batch_in_epoch}.pt"
    if recall is None or state.position.batch_in_epoch:
        raise ValueError(f"a {kind} checkpoint of the retrieval layout is taken at an epoch's end, after validation")
    if kind == "periodic":
        return f"optimized_model_epoch_{epochs}_recall_{recall:.4f}.pt"
    if kind == "best":
        return f"best_optimized_model_recall_{recall:.4f}.pt"
    if kind == "final":
        return f"final_optimized_model_epoch_{epochs}_recall_{recall:.4f}.pt"
    raise ValueError(f"unknown checkpoint kind {kind!r}")


def _fields(state: TrainingState) -> dict[str, Any]:
    own = state.family_fields
    fields = {EPOCH: state.position.epoch, LOSS: own.get(LOSS), RECALL: own.get(RECALL),
              TRAIN_LOSSES: own.get(TRAIN_LOSSES, []), VAL_RECALLS: own.get(VAL_RECALLS, [])}
    if state.position.batch_in_epoch:
        fields[EPOCH_LOSS_SUM] = own.get(EPOCH_LOSS_SUM, 0.0)
    return {**fields, GLOBAL_STEP: state.global_step, CONFIG: state.config}


def _metric(state: TrainingState) -> float | None:
    recall = state.family_fields.get(RECALL)
    return None if recall is None else float(recall)


RETRIEVAL = register_layout(CheckpointLayout(
    name="retrieval", required_keys=(MODEL, OPTIMIZER, EPOCH), metric_name=RECALL, metric_mode="max",
    checkpoint_name=_name, owns_name=lambda name: _NAME_RE.match(name) is not None,
    family_fields=_fields, metric=_metric,
))
