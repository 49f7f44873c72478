"""Sharded (FSDP) checkpoints: a ``torch.distributed.checkpoint`` folder per save point.

Layout of ``checkpoint_step_{N}/`` (and ``best_model/``, ``final_model/``)::

    .metadata, __{rank}_0.distcp       DCP: {"model": ..., "optimizer": ...}, every rank its shards
    ckptkit_training_state.pt          rank 0: the rest of the seed-004 dict (counters, config,
                                       histories, scheduler, RNG of every rank, data position)

plus ``checkpoint_step_{N}.manifest.json`` beside the folder, listing every file's size and
CRC-32. Every rank writes into the same temporary folder (rank 0 picks it and broadcasts its
name); ``dcp.save`` returns on rank 0 only after all ranks' files are written and fsynced and
``.metadata`` is complete; then rank 0 adds its file and the folder is swapped into place
atomically (:func:`ckptkit.atomic.atomic_write_dir`). Saves here are synchronous: the loop
waits for the write (``dcp.async_save`` is the next step; see the README's open items).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ckptkit.atomic import atomic_write_dir
from ckptkit.errors import WriteVerificationError
from ckptkit.manifest import Manifest, describe_files, manifest_path, write_manifest
from ckptkit.training.layout import DCP_METADATA_FILE, TRAINING_STATE_FILE, TrainingState, build_checkpoint
from ckptkit.training.snapshot import StagingArea


def save_sharded(
    path: Path, state: TrainingState, rng_state: dict[str, Any], kind: str,
    manifest_fields: dict[str, Any], world_size: int,
) -> None:
    """Collective: every rank calls it with its own shards; rank 0 commits the folder."""
    model_sd, optim_sd = get_state_dict(state.model, state.optimizer)
    tensors = {"model": model_sd, "optimizer": optim_sd}
    if dist.get_rank() != 0:
        received: list[Any] = [None]
        dist.broadcast_object_list(received, src=0)
        dcp.save(tensors, checkpoint_id=received[0])
        dist.barrier()
        return
    # Through a snapshot for its canonical (interned) strings: equal states, byte-equal files.
    trainer_state = StagingArea(pin_memory=False).snapshot(
        build_checkpoint(state, rng_state, kind, world_size=world_size, sharded=True)
    )

    def populate(tmp: Path) -> None:
        dist.broadcast_object_list([str(tmp)], src=0)
        dcp.save(tensors, checkpoint_id=str(tmp))
        torch.save(trainer_state, tmp / TRAINING_STATE_FILE)

    try:
        os.unlink(manifest_path(path))
    except FileNotFoundError:
        pass
    atomic_write_dir(path, populate, verify=_verify_sharded)
    write_manifest(path, Manifest(checkpoint=path.name, files=describe_files(path), **manifest_fields))
    dist.barrier()  # no rank starts the next save before this folder is committed


def load_sharded_into(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Collective: every rank reads its own shards of model and optimizer state from ``path``."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    tensors = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(tensors, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=tensors["model"], optim_state_dict=tensors["optimizer"])


def _verify_sharded(tmp: Path) -> None:
    if not (tmp / DCP_METADATA_FILE).is_file():
        raise WriteVerificationError(tmp, "torch.distributed.checkpoint wrote no .metadata; the old folder was kept")
    try:
        dcp_metadata = dcp.FileSystemReader(str(tmp)).read_metadata()
        torch.load(tmp / TRAINING_STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # a folder that does not read back must not replace the old one
        raise WriteVerificationError(tmp, f"the new sharded checkpoint does not read back: {exc}") from exc
    if not any(key.startswith("model.") for key in dcp_metadata.state_dict_metadata):
        raise WriteVerificationError(tmp, "the sharded checkpoint holds no model tensors; the old folder was kept")
