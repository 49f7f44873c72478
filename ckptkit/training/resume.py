"""Verified, exact resume: find the checkpoint, check it, then put every piece of state back.

    point = load_for_resume("runs/lm")          # a run directory or one checkpoint
    model = build_model(point.config)           # the checkpoint's config, not the flags
    progress = point.restore(model, optimizer, scheduler, scaler)
    batches = sampler.iterate_from(progress.position)

``verify_for_resume`` is the one gate every resume passes through; it refuses (raises
:class:`ResumeRefusedError`) on anything that would make the resumed run differ silently from
the original, and returns warnings for what only limits exactness.
"""
from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ckptkit.core.checkpoint import Severity
from ckptkit.core.errors import CkptkitError, CorruptCheckpointError, MissingFileError, ResumeRefusedError
from ckptkit.storage.atomic import is_temporary
from ckptkit.storage.manifest import manifest_problems, read_manifest
from ckptkit.training import layout
from ckptkit.training.layout import DCP_METADATA_FILE, TRAINING_STATE_FILE, is_sharded_checkpoint, unwrap_model
from ckptkit.training.pretrained_layout import is_model_folder, load_model_folder
from ckptkit.training.retention import list_checkpoints, unconfirmed_checkpoints
from ckptkit.training.rng import restore_rng_states_all_ranks
from ckptkit.training.sampler import DataPosition
from ckptkit.validation import validate_path


@dataclass
class RestoredProgress:
    """Where the restored run stands; the trainer continues from exactly here."""

    global_step: int
    position: DataPosition | None
    best_val_loss: float
    train_history: list[dict[str, Any]]
    val_history: list[dict[str, Any]]
    window_loss_sum: float = 0.0
    warnings: list[str] = field(default_factory=list)


@dataclass
class ResumePoint:
    """A verified checkpoint, loaded (tensors memory-mapped) but not yet applied to a model."""

    path: Path
    checkpoint: dict[str, Any]
    warnings: list[str]

    @property
    def config(self) -> dict[str, Any]:
        config = self.checkpoint.get(layout.CONFIG)
        return dict(config) if isinstance(config, dict) else {}

    @property
    def global_step(self) -> int:
        return int(self.checkpoint.get(layout.GLOBAL_STEP, 0))  # required by run_experiment.py's layout

    @property
    def trainer(self) -> str | None:
        return (self.checkpoint.get(layout.CKPTKIT) or {}).get("trainer")

    @property
    def sharded(self) -> bool:
        return is_sharded_checkpoint(self.path)

    @property
    def position(self) -> DataPosition | None:
        saved = self.checkpoint.get(layout.DATA_POSITION)
        return DataPosition.from_dict(saved) if saved else None

    def restore(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any = None,
        scaler: Any = None, *, rank: int = 0, world_size: int = 1,
    ) -> RestoredProgress:
        """Load model, optimizer, scheduler, scaler, partial gradients and (last) the RNGs."""
        ckpt = self.checkpoint
        warnings: list[str] = []
        if self.sharded:
            from ckptkit.training.sharded import load_sharded_into  # torch.distributed.checkpoint is heavy

            load_sharded_into(self.path, model, optimizer)
        else:
            _load_model(self.path, unwrap_model(model), ckpt[layout.MODEL])
            optimizer.load_state_dict(ckpt[layout.OPTIMIZER])
        warnings += _load_optional(self.path, "scheduler", scheduler, ckpt.get(layout.SCHEDULER))
        enabled_scaler = scaler if scaler is not None and scaler.is_enabled() else None
        warnings += _load_optional(self.path, "AMP GradScaler", enabled_scaler, ckpt.get(layout.SCALER))
        window_loss_sum = _restore_accumulation(unwrap_model(model), ckpt.get(layout.ACCUMULATION))
        if layout.RNG_STATE in ckpt:  # last: loading above must not disturb the restored streams
            warnings += restore_rng_states_all_ranks(ckpt[layout.RNG_STATE], rank, world_size)
        best = ckpt.get(layout.BEST_VAL_LOSS)
        return RestoredProgress(
            global_step=self.global_step,
            position=self.position,
            best_val_loss=float(best) if best is not None else math.inf,
            train_history=list(ckpt.get(layout.TRAIN_HISTORY) or []),
            val_history=list(ckpt.get(layout.VAL_HISTORY) or []),
            window_loss_sum=window_loss_sum,
            warnings=warnings,
        )


def load_for_resume(path_or_run_dir: Path | str) -> ResumePoint:
    """Resolve (run directory: newest confirmed checkpoint by progress), verify, and load."""
    path, warnings, checkpoint = _resolve(Path(path_or_run_dir))
    return ResumePoint(path=path, checkpoint=checkpoint, warnings=warnings)


def resolve_checkpoint(path: Path) -> tuple[Path, list[str]]:
    """The checkpoint to resume from and the verifier's warnings (plus any skipped candidates)."""
    path, warnings, _ = _resolve(Path(path))
    return path, warnings


def _resolve(path: Path) -> tuple[Path, list[str], dict[str, Any]]:
    if not os.path.lexists(path):
        raise MissingFileError(path, "no such checkpoint or run directory")
    if not path.is_dir() or is_sharded_checkpoint(path) or is_model_folder(path):
        return (path, *_verify(path))
    notes = [f"{p.name}: left by an interrupted save (no manifest); not used" for p in unconfirmed_checkpoints(path)]
    refusals: list[str] = []
    for record in reversed(list_checkpoints(path)):
        try:
            warnings, checkpoint = _verify(record.path)
            return record.path, notes + refusals + warnings, checkpoint
        except CkptkitError as exc:
            refusals.append(f"skipped {record.path.name}, newer but unusable: {exc.message}")
    detail = "; ".join(refusals + notes) or "it holds no checkpoint with a manifest"
    raise ResumeRefusedError(path, f"no complete, valid checkpoint in this run directory ({detail})")


def verify_for_resume(path: Path) -> list[str]:
    """Refuse (ResumeRefusedError) a checkpoint that is damaged, incomplete or unloadable.

    Checks the manifest's sizes and CRC-32s when there is one, that the checkpoint loads with
    ``torch.load(weights_only=True)``, and that it holds what a resume needs. Returns warnings
    (no manifest, no data position, no RNG state) that make the resume less than exact.
    """
    return _verify(Path(path))[0]


def _verify(path: Path) -> tuple[list[str], dict[str, Any]]:
    """verify_for_resume, also returning the checkpoint it loaded (memory-mapped)."""
    if not os.path.lexists(path):
        raise MissingFileError(path, "no such checkpoint")
    if is_temporary(path):
        raise ResumeRefusedError(path, "this is the temporary file of an interrupted write, not a checkpoint")
    warnings = []
    try:
        manifest = read_manifest(path)
    except CorruptCheckpointError as exc:
        raise ResumeRefusedError(path, exc.message) from exc
    if manifest is None:
        warnings.append("no manifest: nothing confirms this checkpoint was written completely")
    elif problems := manifest_problems(path, manifest, checksums=False):
        raise ResumeRefusedError(path, "does not match its manifest: " + "; ".join(problems))
    # The CRC-32 pass reads every byte; it runs beside the validation and the (mapped) load,
    # and a mismatch is reported before anything those found.
    checksums = _in_background(lambda: manifest_problems(path, manifest) if manifest is not None else [])
    try:
        warnings += _validator_warnings(path)
        checkpoint = _load_checkpoint_dict(path)
    except CkptkitError:
        if problems := checksums():
            raise ResumeRefusedError(path, "does not match its manifest: " + "; ".join(problems)) from None
        raise
    if problems := checksums():
        raise ResumeRefusedError(path, "does not match its manifest: " + "; ".join(problems))
    required = (layout.GLOBAL_STEP,) if is_sharded_checkpoint(path) else layout.layout_of(checkpoint).required_keys
    if missing := [k for k in required if k not in checkpoint]:
        raise ResumeRefusedError(path, f"missing {', '.join(missing)}; a resume needs them")
    if layout.DATA_POSITION not in checkpoint:
        warnings.append("no data_position: the data order restarts at the beginning of an epoch; "
                        "resume will not be exact")
    if layout.RNG_STATE not in checkpoint:
        warnings.append("no rng_state: random streams (dropout, sampling) will differ from the original run")
    return warnings, checkpoint


def _in_background(job: Callable[[], list[str]]) -> Callable[[], list[str]]:
    """Start ``job`` on a thread; the returned call waits for its result (or re-raises its error)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = job()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="ckptkit-resume-crc", daemon=True)
    thread.start()

    def result() -> list[str]:
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    return result


def _validator_warnings(path: Path) -> list[str]:
    """ckptkit's own validation, the same as `ckptkit validate PATH`: errors refuse the resume."""

    try:
        report = validate_path(path, siblings=False)
    except CkptkitError as exc:
        raise ResumeRefusedError(path, exc.message) from exc
    errors = [f for f in report.findings if f.severity is Severity.ERROR]
    if errors:
        listed = "; ".join(f"{f.code}: {f.message}" for f in errors[:3])
        raise ResumeRefusedError(path, f"validation found {len(errors)} error(s): {listed}")
    # The manifest's absence is said by the resume itself, for every checkpoint (the validator
    # says it only for ckptkit's trainers' own): once is enough.
    return [f"{f.code}: {f.message}" for f in report.findings
            if f.severity is Severity.WARNING and f.code != "completeness.unconfirmed"]


def _load_checkpoint_dict(path: Path) -> dict[str, Any]:
    if is_model_folder(path):   # EnStack's save_pretrained folder
        return load_model_folder(path)
    source = path / TRAINING_STATE_FILE if path.is_dir() else path
    if path.is_dir() and not (path / DCP_METADATA_FILE).is_file():
        raise ResumeRefusedError(path, "a folder without torch.distributed.checkpoint .metadata "
                                 "is not a checkpoint ckptkit can resume")
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError as exc:
        raise ResumeRefusedError(path, f"{source.name} is missing") from exc
    except Exception as exc:  # weights_only refusals, zip damage, truncation: all mean "do not resume"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResumeRefusedError(
            path, f"does not load with torch.load(weights_only=True): {first_line} "
            "(a pickled class such as a config object: `ckptkit repair` rewrites it as a plain dict)"
        ) from exc
    if not isinstance(loaded, dict):
        raise ResumeRefusedError(path, f"holds a {type(loaded).__name__}, not a checkpoint dict")
    return loaded


def _load_model(path: Path, model: torch.nn.Module, state_dict: dict[str, Any]) -> None:
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ResumeRefusedError(
            path, f"model_state_dict does not fit the model: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]} (`ckptkit validate --against` explains the cause)"
        )


def _load_optional(path: Path, what: str, target: Any, state: Any) -> list[str]:
    if target is None and state is not None:
        return [f"the checkpoint has {what} state but this run has no {what}; ignored"]
    if target is not None and state is None:
        return [f"this run has a {what} but the checkpoint has no {what} state; it starts fresh"]
    if target is not None:
        target.load_state_dict(state)
    return []


def _restore_accumulation(model: torch.nn.Module, accumulation: dict[str, Any] | None) -> float:
    """Gradients of a half-finished accumulation window, as they were at the interrupt."""
    if not accumulation:
        return 0.0
    grads = accumulation.get("grads") or {}
    for name, param in model.named_parameters():
        saved = grads.get(name)
        param.grad = None if saved is None else saved.to(device=param.device, dtype=param.dtype).clone()
    return float(accumulation.get("loss_sum", 0.0))
