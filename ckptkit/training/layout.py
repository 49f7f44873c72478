"""Checkpoint layouts ckptkit's training manager writes; run_experiment.py's is the default.

A :class:`CheckpointLayout` says how a family names its files for a kind and progress, which
names are its own, which keys a resume needs, and which of the checkpoint's keys are the
family's own counters. Everything else in the dict (scheduler, scaler, RNG, data position,
accumulation, ``ckptkit`` marker) is ckptkit's and the same for every layout. A checkpoint in a
layout other than the default names it in its marker (``"layout": "retrieval"``), so a resume
finds its required keys; run_experiment.py's marker stays as it always was.

run_experiment.py LM (``EXPERIMENT``, the ``experiment`` family):

File names: ``checkpoint_step_{N}.pt`` (periodic), ``best_model.pt``, ``final_model.pt``, and
``checkpoint_step_{N}_micro_{k}.pt`` for a checkpoint taken inside a gradient-accumulation
window (an interrupted run). Sharded (FSDP) runs use the same names without ``.pt`` for
folders. Each checkpoint is a plain dict that ``torch.load(weights_only=True)`` accepts::

    model_state_dict, optimizer_state_dict, scheduler_state_dict,   # run_experiment.py LM
    global_step, epoch, best_val_loss, config (plain dict),         # run_experiment.py LM
    train_history, val_history,                                     # run_experiment.py LM
    scaler_state_dict (AMP GradScaler, only when enabled),
    rng_state   {"world_size": W, "ranks": [...]}  (see ckptkit.training.rng),
    data_position  (see ckptkit.training.sampler.DataPosition),
    accumulation   {"micro_step", "loss_sum", "grads": {param name: tensor}} (only mid-window),
    ckptkit     {"version": 1, "trainer": "lm", "kind": "periodic", "world_size": W, "sharded": bool}

Nothing time- or host-dependent is stored, so two runs that reach the same state write
byte-identical files.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ckptkit.formats.dcp import CKPTKIT_TRAINING_STATE
from ckptkit.training.sampler import DataPosition

MODEL = "model_state_dict"
OPTIMIZER = "optimizer_state_dict"
SCHEDULER = "scheduler_state_dict"
SCALER = "scaler_state_dict"
GLOBAL_STEP = "global_step"
EPOCH = "epoch"
BEST_VAL_LOSS = "best_val_loss"
CONFIG = "config"
TRAIN_HISTORY = "train_history"
VAL_HISTORY = "val_history"
RNG_STATE = "rng_state"
DATA_POSITION = "data_position"
ACCUMULATION = "accumulation"
CKPTKIT = "ckptkit"
REQUIRED_KEYS = (MODEL, OPTIMIZER, GLOBAL_STEP)

FORMAT_VERSION = 1
BEST_NAME = "best_model"
FINAL_NAME = "final_model"
KINDS = ("periodic", "best", "final", "interrupt")
# Sharded (FSDP) checkpoints are folders: torch.distributed.checkpoint files plus this one.
TRAINING_STATE_FILE = CKPTKIT_TRAINING_STATE   # the DCP reader merges it into the folder
DCP_METADATA_FILE = ".metadata"
_PERIODIC_RE = re.compile(r"^checkpoint_step_(\d+)(?:_micro_(\d+))?(\.pt)?$")


@dataclass
class TrainingState:
    """Everything a trainer hands to :meth:`CheckpointManager.save` (live objects, not copies)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: dict[str, Any]
    position: DataPosition
    global_step: int = 0
    scheduler: Any = None  # torch.optim.lr_scheduler.LRScheduler
    scaler: Any = None  # torch.amp.GradScaler; saved only when enabled
    best_val_loss: float = math.inf
    last_val_loss: float | None = None  # the metric retention keeps the best of
    train_history: list[dict[str, Any]] = field(default_factory=list)
    val_history: list[dict[str, Any]] = field(default_factory=list)
    window_loss_sum: float = 0.0  # losses of the micro-batches accumulated so far (mid-window)
    trainer: str = "lm"
    # The family's own keys and values, for layouts whose counters TrainingState does not name
    # (the fashion recommender's loss, recall_at_10, train_losses, val_recalls); run_experiment.py's layout ignores it.
    family_fields: dict[str, Any] = field(default_factory=dict)


def checkpoint_name(kind: str, global_step: int, micro_step: int = 0, *, sharded: bool = False) -> str:
    if kind == "best":
        stem = BEST_NAME
    elif kind == "final":
        stem = FINAL_NAME
    elif kind in ("periodic", "interrupt"):
        stem = f"checkpoint_step_{global_step}" + (f"_micro_{micro_step}" if micro_step else "")
    else:
        raise ValueError(f"unknown checkpoint kind {kind!r}; expected one of {KINDS}")
    return stem if sharded else stem + ".pt"


def is_periodic_name(name: str) -> bool:
    return _PERIODIC_RE.match(name) is not None


def _seed_004_name(kind: str, state: TrainingState, sharded: bool) -> str:
    return checkpoint_name(kind, state.global_step, state.position.micro_step, sharded=sharded)


def _seed_004_owns(name: str) -> bool:
    stem = name[:-3] if name.endswith(".pt") else name
    return stem in (BEST_NAME, FINAL_NAME) or is_periodic_name(name)


def _seed_004_fields(state: TrainingState) -> dict[str, Any]:
    return {
        GLOBAL_STEP: state.global_step, EPOCH: state.position.epoch, BEST_VAL_LOSS: state.best_val_loss,
        CONFIG: state.config, TRAIN_HISTORY: state.train_history, VAL_HISTORY: state.val_history,
    }


@dataclass(frozen=True)
class CheckpointLayout:
    """One family's file names and own keys (see the module docstring)."""

    name: str  # the ckptkit.families family its files are read as
    required_keys: tuple[str, ...]  # what a resume refuses to go without
    metric_name: str  # the metric manifests record and retention keeps the best of
    metric_mode: str  # "min" or "max"
    checkpoint_name: Callable[[str, TrainingState, bool], str]  # (kind, state, sharded) -> name
    owns_name: Callable[[str], bool]  # whether a file name is one this layout writes
    family_fields: Callable[[TrainingState], dict[str, Any]]  # the family's keys, in file order
    metric: Callable[[TrainingState], float | None] = lambda state: state.last_val_loss
    # Writes one checkpoint in place of the manager's single file (EnStack's folders):
    # (path, checkpoint dict, manifest fields); None: ckptkit.training.manager.write_checkpoint_file.
    write: Callable[[Path, dict[str, Any], dict[str, Any]], Any] | None = None


EXPERIMENT = CheckpointLayout(
    name="experiment", required_keys=REQUIRED_KEYS, metric_name="val_loss", metric_mode="min",
    checkpoint_name=_seed_004_name, owns_name=_seed_004_owns, family_fields=_seed_004_fields,
)
DEFAULT_LAYOUT = EXPERIMENT
LAYOUTS: dict[str, CheckpointLayout] = {EXPERIMENT.name: EXPERIMENT}


def register_layout(layout: CheckpointLayout) -> CheckpointLayout:
    LAYOUTS[layout.name] = layout
    return layout


def layout_of(checkpoint: dict[str, Any]) -> CheckpointLayout:
    """The layout a loaded checkpoint names in its ``ckptkit`` marker (run_experiment.py's when none)."""
    marker = checkpoint.get(CKPTKIT)
    name = marker.get("layout") if isinstance(marker, dict) else None
    return LAYOUTS.get(name, DEFAULT_LAYOUT) if isinstance(name, str) else DEFAULT_LAYOUT


def is_sharded_checkpoint(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / DCP_METADATA_FILE).is_file()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module under DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def build_checkpoint(
    state: TrainingState, rng_state: dict[str, Any], kind: str, *, world_size: int = 1, sharded: bool = False,
    layout: CheckpointLayout = DEFAULT_LAYOUT,
) -> dict[str, Any]:
    """The checkpoint dict; model/optimizer entries are left out for sharded checkpoints."""
    model = unwrap_model(state.model)
    ckpt: dict[str, Any] = {}
    if not sharded:
        ckpt[MODEL] = model.state_dict()
        ckpt[OPTIMIZER] = state.optimizer.state_dict()
    ckpt[SCHEDULER] = state.scheduler.state_dict() if state.scheduler is not None else None
    ckpt.update(layout.family_fields(state))
    if state.scaler is not None and state.scaler.is_enabled():
        ckpt[SCALER] = state.scaler.state_dict()
    ckpt[RNG_STATE] = rng_state
    ckpt[DATA_POSITION] = state.position.to_dict()
    if state.position.micro_step and not sharded:
        ckpt[ACCUMULATION] = {
            "micro_step": state.position.micro_step,
            "loss_sum": state.window_loss_sum,
            "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
        }
    ckpt[CKPTKIT] = {
        "version": FORMAT_VERSION,
        "trainer": state.trainer,
        "kind": kind,
        "world_size": world_size,
        "sharded": sharded,
    }
    if layout is not DEFAULT_LAYOUT:  # run_experiment.py's marker (and bytes) stay as they always were
        ckpt[CKPTKIT]["layout"] = layout.name
    return ckpt
