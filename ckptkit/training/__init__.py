"""ckptkit's library API for resumable training, used by every bundled trainer.

Saving: :class:`CheckpointManager` (atomic, verified, asynchronous, manifests, retention) fed a
:class:`TrainingState`. Data: :class:`ResumableSampler` and :class:`DataPosition`. Resuming:
:func:`load_for_resume` -> :class:`ResumePoint` -> ``restore(...)`` -> :class:`RestoredProgress`,
gated by :func:`verify_for_resume`. Progress display: :class:`ProgressLine`. What every training
script does the same way (device, seeds, autocast, Ctrl+C/SIGTERM as a save-and-stop, DDP/FSDP
helpers): :mod:`ckptkit.training.runtime`; its shared command-line pieces (run flags, resume
rules and report): :mod:`ckptkit.training.run_command`. The bundled trainers call these
explicitly; there is no base class to fill in.
"""
from __future__ import annotations

from ckptkit.training.layout import (
    DEFAULT_LAYOUT,
    EXPERIMENT,
    CheckpointLayout,
    TrainingState,
    build_checkpoint,
    checkpoint_name,
    layout_of,
    unwrap_model,
)
from ckptkit.training.manager import CheckpointManager, rank_and_world_size, write_checkpoint_file
from ckptkit.training.pretrained_layout import PRETRAINED
from ckptkit.training.progress import ProgressLine, render_progress
from ckptkit.training.recsys_layout import RECSYS
from ckptkit.training.resume import (
    RestoredProgress,
    ResumePoint,
    load_for_resume,
    resolve_checkpoint,
    verify_for_resume,
)
from ckptkit.training.retention import CheckpointRecord, list_checkpoints, select_for_deletion
from ckptkit.training.retrieval_layout import RETRIEVAL
from ckptkit.training.rng import (
    capture_rng_state,
    capture_rng_states_all_ranks,
    restore_rng_state,
    restore_rng_states_all_ranks,
)
from ckptkit.training.sampler import DataPosition, ResumableSampler, SampledBatch

__all__ = [
    "DEFAULT_LAYOUT",
    "EXPERIMENT",
    "PRETRAINED",
    "RECSYS",
    "RETRIEVAL",
    "CheckpointLayout",
    "CheckpointManager",
    "CheckpointRecord",
    "DataPosition",
    "ProgressLine",
    "ResumableSampler",
    "RestoredProgress",
    "ResumePoint",
    "SampledBatch",
    "TrainingState",
    "build_checkpoint",
    "capture_rng_state",
    "capture_rng_states_all_ranks",
    "checkpoint_name",
    "layout_of",
    "list_checkpoints",
    "load_for_resume",
    "rank_and_world_size",
    "render_progress",
    "resolve_checkpoint",
    "restore_rng_state",
    "restore_rng_states_all_ranks",
    "select_for_deletion",
    "unwrap_model",
    "verify_for_resume",
    "write_checkpoint_file",
]
