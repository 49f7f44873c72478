"""EnStack's checkpoint layout (the text classifier): ``save_pretrained`` folders with a training state.

Folders, as the seed's trainer names them (each replaced whole on every save)::

    last_checkpoint/        # every save_steps batches, at every epoch's end, on an interrupt, at the end
    best_model/             # when the validation F1 improves
        config.json         # the model's config (written by ckptkit: no transformers needed)
        model.safetensors   # the model's weights
        training_state.pth  # everything else, a dict torch.load(weights_only=True) accepts

plus ``last_checkpoint.manifest.json`` beside each folder (every file's size and CRC-32), written
last. The seed's keys in ``training_state.pth``: ``epoch`` (1-based; the epoch just finished when
``step`` is 0, else the epoch in progress), ``step`` (batches done in it; 0 = end of epoch),
``total_batches``, ``best_val_f1``, ``best_val_acc``, ``optimizer_state_dict``,
``scheduler_state_dict``. ckptkit adds ``global_step``, ``config`` (a plain dict) and the extras
every layout has (see :mod:`ckptkit.training.layout`). A folder is written like a sharded
checkpoint: a temporary folder beside the target, fsynced and read back, swapped in with
:func:`ckptkit.storage.atomic.commit_dir`; the seed's rolled-back or half-synced folder cannot happen.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ckptkit.core.errors import ResumeRefusedError, WriteVerificationError
from ckptkit.formats.save_pretrained import TRAINING_STATE as STATE_FILE
from ckptkit.storage.atomic import commit_dir, new_temp_dir
from ckptkit.storage.manifest import Manifest, describe_files, put_back_manifest, take_manifest, write_manifest
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

STEP = "step"
TOTAL_BATCHES = "total_batches"
BEST_F1 = "best_val_f1"
BEST_ACC = "best_val_acc"
VAL_F1 = "val_f1"  # family_fields only: the F1 of the validation just run (the best checkpoint's metric)
MODEL_CONFIG = "model_config"  # family_fields only: what config.json holds
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LAST_NAME, BEST_NAME = "last_checkpoint", "best_model"


def _name(kind: str, state: TrainingState, sharded: bool) -> str:
    if sharded:
        raise ValueError("the training-state layout has no sharded form")
    if kind == "best":
        return BEST_NAME
    if kind in ("periodic", "interrupt", "final"):
        return LAST_NAME
    raise ValueError(f"unknown checkpoint kind {kind!r}")


def _fields(state: TrainingState) -> dict[str, Any]:
    own, position = state.family_fields, state.position
    inside = position.batch_in_epoch > 0
    return {
        EPOCH: position.epoch + 1 if inside else position.epoch, STEP: position.batch_in_epoch,
        TOTAL_BATCHES: position.steps_per_epoch, BEST_F1: own.get(BEST_F1), BEST_ACC: own.get(BEST_ACC),
        GLOBAL_STEP: state.global_step, CONFIG: state.config, MODEL_CONFIG: own.get(MODEL_CONFIG, {}),
    }


def write_model_folder(path: Path, checkpoint: dict[str, Any], manifest_fields: dict[str, Any]) -> Manifest:
    """Write ``checkpoint`` as a save_pretrained folder at ``path``, atomically, then its manifest."""
    path = Path(path)
    state = {k: v for k, v in checkpoint.items() if k not in (MODEL, MODEL_CONFIG)}
    tmp = new_temp_dir(path)
    try:
        save_file({k: v.contiguous() for k, v in checkpoint[MODEL].items()}, str(tmp / WEIGHTS_FILE),
                  metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(checkpoint.get(MODEL_CONFIG) or {}, indent=2, sort_keys=True) + "\n")
        torch.save(state, tmp / STATE_FILE)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old_manifest = take_manifest(path)   # as late as possible: until now the old folder was vouched for
    try:
        commit_dir(tmp, path, verify=lambda written: _verify_folder(path, written, set(checkpoint[MODEL]), set(state)))
    except BaseException:
        put_back_manifest(path, old_manifest)
        raise
    manifest = Manifest(checkpoint=path.name, files=describe_files(path), **manifest_fields)
    write_manifest(path, manifest)
    return manifest


def _verify_folder(target: Path, tmp: Path, weights: set[str], keys: set[str]) -> None:
    try:
        json.loads((tmp / CONFIG_FILE).read_text())
        found_weights = set(load_file(str(tmp / WEIGHTS_FILE)))
        found_keys = set(torch.load(tmp / STATE_FILE, map_location="cpu", weights_only=True))
    except Exception as exc:  # a folder that does not read back must not replace the old one
        raise WriteVerificationError(
            target, f"the new folder does not read back: {exc}; the old folder was kept"
        ) from exc
    if found_weights != weights or found_keys != keys:
        raise WriteVerificationError(
            target, "the new folder read back other tensors or keys than were written; the old folder was kept"
        )


def is_model_folder(path: Path) -> bool:
    """A folder this layout writes (weights and training state side by side)."""
    return Path(path).is_dir() and (Path(path) / STATE_FILE).is_file()


def load_model_folder(path: Path) -> dict[str, Any]:
    """training_state.pth with the weights of model.safetensors under ``model_state_dict``."""
    try:
        checkpoint = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncation, zip damage, a pickled class: do not resume
        raise ResumeRefusedError(
            path, f"{STATE_FILE} does not load with torch.load(weights_only=True): {_first_line(exc)}"
        ) from exc
    if not isinstance(checkpoint, dict):
        raise ResumeRefusedError(path, f"{STATE_FILE} holds a {type(checkpoint).__name__}, not a dict")
    if not (path / WEIGHTS_FILE).is_file():
        raise ResumeRefusedError(path, f"{WEIGHTS_FILE} is missing")
    try:
        checkpoint[MODEL] = load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ResumeRefusedError(path, f"{WEIGHTS_FILE} does not load: {_first_line(exc)}") from exc
    return checkpoint


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _metric(state: TrainingState) -> float | None:
    value = state.family_fields.get(VAL_F1)
    return None if value is None else float(value)


PRETRAINED = register_layout(CheckpointLayout(
    name="training-state", required_keys=(MODEL, OPTIMIZER, EPOCH), metric_name="val_f1", metric_mode="max",
    checkpoint_name=_name, owns_name=lambda name: name in (LAST_NAME, BEST_NAME),
    family_fields=_fields, metric=_metric, write=write_model_folder,
))
