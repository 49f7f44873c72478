"""LlamaRec retriever's checkpoint layout (the sequential recommender), as ckptkit's manager writes it.

File names, as the seed's trainer names them (one file each, overwritten in place)::

    checkpoint-recent.pth          # at the end of every epoch; ckptkit's interrupts go here too
    best_acc_model.pth             # whenever validation accuracy improves (mode max)
    checkpoint-recent.pth.final    # when training completes (no ``.pth`` ending)

LlamaRec's keys: ``model_state_dict``, ``optimizer_state_dict`` and ``epoch``, the number of
epochs finished (LlamaRec logs the 0-based loop index + 1 and its resume loops
``range(checkpoint['epoch'], num_epochs)``; see ``ckptkit.families.llamarec``). ckptkit adds
``accuracy`` (the last finished epoch's validation accuracy),
``best_acc`` (the best so far, which decides the next best file), ``global_step``, ``config`` and
the extras every layout has (see :mod:`ckptkit.training.layout`). A checkpoint taken inside an
epoch keeps ``epoch`` at the epochs finished, so LlamaRec's own resume starts that epoch over
(it cannot skip into an epoch), and adds ``epoch_loss_sum`` (the losses of the epoch's batches so far).
"""
from __future__ import annotations

import math
from typing import Any

from ckptkit.families.llamarec import BEST, FINAL, RECENT
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

RECENT_NAME, BEST_NAME, FINAL_NAME = RECENT, BEST, FINAL   # the family owns its file names
ACCURACY = "accuracy"
BEST_ACC = "best_acc"
EPOCH_LOSS_SUM = "epoch_loss_sum"
_NAMES = {"periodic": RECENT_NAME, "interrupt": RECENT_NAME, "best": BEST_NAME, "final": FINAL_NAME}


def _name(kind: str, state: TrainingState, sharded: bool) -> str:
    if sharded:
        raise ValueError("the recsys layout has no sharded form")
    if kind not in _NAMES:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    if kind != "interrupt" and state.position.batch_in_epoch:
        raise ValueError(f"a {kind} checkpoint of the recsys layout is taken at an epoch's end, after validation")
    return _NAMES[kind]


def _fields(state: TrainingState) -> dict[str, Any]:
    own = state.family_fields
    fields = {EPOCH: state.position.epoch, ACCURACY: own.get(ACCURACY), BEST_ACC: own.get(BEST_ACC)}
    if state.position.batch_in_epoch:
        fields[EPOCH_LOSS_SUM] = own.get(EPOCH_LOSS_SUM, 0.0)
    return {**fields, GLOBAL_STEP: state.global_step, CONFIG: state.config}


def _metric(state: TrainingState) -> float | None:
    accuracy = state.family_fields.get(ACCURACY)
    return None if accuracy is None or not math.isfinite(accuracy) else float(accuracy)


RECSYS = register_layout(CheckpointLayout(
    name="recsys", required_keys=(MODEL, OPTIMIZER, EPOCH), metric_name=ACCURACY, metric_mode="max",
    checkpoint_name=_name, owns_name=lambda name: name in (RECENT_NAME, BEST_NAME, FINAL_NAME),
    family_fields=_fields, metric=_metric,
))
