"""Seed 000's checkpoint layout (the sequential recommender), as ckptkit's manager writes it.

File names, as the seed's trainer names them (one file each, overwritten in place)::

    checkpoint-recent.pth          # at the end of every epoch; ckptkit's interrupts go here too
    best_acc_model.pth             # whenever validation accuracy improves (mode max)
    checkpoint-recent.pth.final    # when training completes (no ``.pth`` ending)

The seed's keys: ``model_state_dict``, ``optimizer_state_dict`` and ``epoch``, the 0-based index
of the last finished epoch (the seed's trainer restarts at ``epoch + 1``; -1 before the first
one ends). ckptkit adds ``accuracy`` (the last finished epoch's validation accuracy),
``best_acc`` (the best so far, which decides the next best file), ``global_step``, ``config`` and
the extras every layout has (see :mod:`ckptkit.training.layout`). A checkpoint taken inside an
epoch keeps ``epoch`` at the last finished one, so the seed's own trainer still reads it right,
and adds ``epoch_loss_sum`` (the losses of the epoch's batches so far).
"""
from __future__ import annotations

import math
from typing import Any

from ckptkit.training.layout import (CONFIG, EPOCH, GLOBAL_STEP, MODEL, OPTIMIZER, CheckpointLayout, TrainingState,
                                     register_layout)

RECENT_NAME = "checkpoint-recent.pth"
BEST_NAME = "best_acc_model.pth"
FINAL_NAME = RECENT_NAME + ".final"
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
    fields = {EPOCH: state.position.epoch - 1, ACCURACY: own.get(ACCURACY), BEST_ACC: own.get(BEST_ACC)}
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
