"""Sharded (FSDP) checkpoints: a ``torch.distributed.checkpoint`` folder per save point.

Layout of ``checkpoint_step_{N}/`` (and ``best_model/``, ``final_model/``)::

    .metadata, __{rank}_0.distcp       DCP: {"model": ..., "optimizer": ...}, every rank its shards
    ckptkit_training_state.pt          rank 0: the rest of the run_experiment.py LM dict (counters, config,
                                       histories, scheduler, RNG of every rank, data position)

plus ``checkpoint_step_{N}.manifest.json`` beside the folder, listing every file's size and
CRC-32. Every rank writes into the same temporary folder (rank 0 picks it and broadcasts its
name); DCP's save completes on rank 0 only after all ranks' files are written and fsynced and
``.metadata`` is complete; then rank 0 adds its file and the folder is swapped into place
atomically (:func:`ckptkit.storage.atomic.commit_dir`). With ``asynchronous`` (see
:class:`ShardedSaver`) the loop pays only the copy of its shards into reused CPU buffers.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ckptkit.core.errors import WriteVerificationError
from ckptkit.storage.atomic import commit_dir, new_temp_dir
from ckptkit.storage.manifest import Manifest, describe_files, put_back_manifest, take_manifest, write_manifest
from ckptkit.training.layout import DCP_METADATA_FILE, TRAINING_STATE_FILE, TrainingState, build_checkpoint
from ckptkit.training.snapshot import StagingArea


class ShardedSaver:
    """Writes sharded checkpoints; one per CheckpointManager (collective: built on every rank).

    Asynchronous (the default on the manager): ``torch.distributed.checkpoint.async_save``
    copies every rank's shards into CPU buffers that are kept and reused from save to save
    (pinned on CUDA), and writes them from a background thread, whose collectives run on a
    process group of its own (gloo), so they never interleave with the training loop's.
    The returned job, run by the manager's background writer, waits for the shards and, on
    rank 0, adds the training state file, verifies the folder, swaps it into place and
    writes the manifest. Until then only the temporary folder holds the new checkpoint.
    """

    def __init__(self, *, asynchronous: bool) -> None:
        self.asynchronous = asynchronous
        self._group = dist.new_group(backend="gloo") if asynchronous else None
        self._stager = _reusable_stager() if asynchronous else None

    def save(
        self, targets: list[tuple[str, Path]], state: TrainingState, rng_state: dict[str, Any],
        manifest_fields: dict[str, dict[str, Any]], world_size: int,
    ) -> Callable[[], None]:
        """Collective. Returns the job that finishes the save (to run now or in the background).

        The shards are written once, into the first target; further targets (a save that is
        both "best" and "periodic") get hard links to the same shard files and their own
        training state file: checkpoint folders are never modified in place, only replaced.
        """
        model_sd, optim_sd = get_state_dict(state.model, state.optimizer)
        tensors = {"model": model_sd, "optimizer": optim_sd}
        rank = dist.get_rank()
        (first_kind, first), others = targets[0], targets[1:]
        trainer_states: dict[str, Any] = {}
        if rank == 0:
            for kind, _ in targets:
                # Through a snapshot for its canonical (interned) strings: equal states, byte-equal files.
                trainer_states[kind] = StagingArea(pin_memory=False).snapshot(
                    build_checkpoint(state, rng_state, kind, world_size=world_size, sharded=True))
        name = [str(new_temp_dir(first)) if rank == 0 else ""]   # the other ranks receive rank 0's
        dist.broadcast_object_list(name, src=0)
        tmp = Path(name[0])
        if self.asynchronous:
            kwargs = {} if self._stager is None else {"async_stager": self._stager}
            written = dcp.async_save(tensors, checkpoint_id=str(tmp), process_group=self._group, **kwargs)
            # A Future, as the stager stages synchronously; torch answers an AsyncSaveResponse
            # (staging and upload futures) only to stagers that stage in the background.
            upload = written if isinstance(written, Future) else written.upload_completion
            shards_written: Callable[[], object] = upload.result
        else:
            dcp.save(tensors, checkpoint_id=str(tmp))
            shards_written = _nothing

        def finish() -> None:
            if rank != 0:
                shards_written()
                return
            try:
                shards_written()   # on rank 0: every rank's shards and .metadata are written
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _commit(tmp, first, trainer_states[first_kind], manifest_fields[first_kind])
            for kind, path in others:
                linked = new_temp_dir(path)
                try:
                    _link_shards(first, linked)
                except BaseException:
                    shutil.rmtree(linked, ignore_errors=True)
                    raise
                _commit(linked, path, trainer_states[kind], manifest_fields[kind])

        return finish

    def close(self) -> None:
        if self._stager is not None:
            self._stager.close()
            self._stager = None


def _commit(tmp: Path, path: Path, trainer_state: Any, manifest_fields: dict[str, Any]) -> None:
    """Rank 0: add the training state file, verify, swap the folder in, then write its manifest.

    The old folder's manifest is taken away only now, just before the swap: while the shards
    were being written in the background the old folder was untouched and still vouched for
    (a crash then leaves it confirmed), and a manifest never vouches for the new folder's files
    before they are the ones in place.
    """
    try:
        torch.save(trainer_state, tmp / TRAINING_STATE_FILE)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old_manifest = take_manifest(path)
    try:
        commit_dir(tmp, path, verify=_verify_sharded)
    except BaseException:
        put_back_manifest(path, old_manifest)   # where the old folder is still in place
        raise
    write_manifest(path, Manifest(checkpoint=path.name, files=describe_files(path), **manifest_fields))


def _link_shards(source: Path, tmp: Path) -> None:
    """Every file of ``source`` but its training state, hard-linked (copied where links fail)."""
    for item in source.iterdir():
        if item.name == TRAINING_STATE_FILE:
            continue
        try:
            os.link(item, tmp / item.name)
        except OSError:
            shutil.copy2(item, tmp / item.name)


def _nothing() -> None:
    return None


def _reusable_stager() -> Any:
    """DCP's stager with buffers cached across saves (pinned on CUDA); None on an older torch,
    whose async_save then stages into fresh CPU memory each time."""
    try:
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
    except ImportError:
        return None
    cuda = torch.cuda.is_available()
    return DefaultStager(StagingOptions(use_pinned_memory=cuda, use_shared_memory=False,
                                        use_async_staging=False, use_non_blocking_copy=cuda))


def load_sharded_into(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Collective: every rank reads its own shards of model and optimizer state from ``path``."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    tensors = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(tensors, checkpoint_id=str(path))   # fills model_sd and optim_sd in place
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)


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
