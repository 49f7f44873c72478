"""Exact, verified resume for any Hugging Face ``transformers.Trainer`` (``pip install "ckptkit[hf]"``).

Three lines in a training script::

    from ckptkit.integrations.hf import ExactResume, verified_checkpoint
    ExactResume.attach(trainer)
    trainer.train(resume_from_checkpoint=verified_checkpoint(args.output_dir))

Why Trainer alone is not exact (transformers 5.x ``trainer.py``): the resumed epoch's order is
drawn by ``iter(train_dataloader)`` before ``rng_state.pth`` is restored (``_run_epoch`` loads it
only after the first skipped batches); a DataLoader's own ``generator`` is saved nowhere; the
EarlyStopping patience comes back only with ``restore_callback_states_from_checkpoint=True``;
the LR schedule and the batches to skip are recomputed from the current arguments; the loss
logged after a resume restarts its running sums. ExactResume records, at each save, what is
missing (``ckptkit_resume.json`` in the folder), restores it at the moment each piece is used,
refuses a resume whose arguments would shift the data order or the schedule, and writes
ckptkit's manifest as the folder's commit marker once ``ckptkit validate`` finds it clean.

transformers is imported here and nowhere else in ckptkit.
"""
from __future__ import annotations

import base64
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import transformers.trainer as hf_trainer_module
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import TrainOutput

from ckptkit.core.errors import ResumeRefusedError
from ckptkit.integrations.hf_checkpoints import (
    commit_checkpoint,
    drop_orphan_manifests,
    newest_verified,
    pick_checkpoint,
    read_resume_state,
    rotate,
    write_resume_state,
)

if TYPE_CHECKING:
    import optuna  # only named in Trainer.train's signature, which ExactResume repeats

logger = logging.getLogger(__name__)

# Arguments that decide which sample lands in which optimizer step: a change shifts the batches
# a resume skips, so the run is no longer the one checkpointed.
DATA_ORDER = ("per_device_train_batch_size", "gradient_accumulation_steps", "train_samples", "batches_per_epoch",
              "seed", "data_seed", "world_size", "dataloader_drop_last", "group_by_length")
# Arguments that decide the learning rate at each step (the scheduler is rebuilt from them).
SCHEDULE = ("learning_rate", "lr_scheduler_type", "warmup_steps", "warmup_ratio", "num_train_epochs", "max_steps")
# Changing these moves no batch and no learning rate: a warning is enough.
HARMLESS = ("logging_steps", "eval_steps", "save_steps")

__all__ = ["ExactResume", "verified_checkpoint", "pick_checkpoint"]


def verified_checkpoint(target: str | Path) -> str | None:
    """What to pass as ``resume_from_checkpoint``: for an output_dir, its newest checkpoint-N/ that
    is whole and passes ``ckptkit validate`` (newer broken ones are passed over with a warning);
    for a checkpoint folder, that folder once verified; None when the run has not saved yet.
    Raises ckptkit's ResumeRefusedError when nothing usable is there."""
    pick = pick_checkpoint(target)
    for note in pick.passed_over:
        warnings.warn(f"ckptkit: passed over {note}", stacklevel=2)
    for note in pick.warnings:
        warnings.warn(f"ckptkit: {pick.path}: {note}", stacklevel=2)
    return str(pick.path) if pick.path is not None else None


class ExactResume(TrainerCallback):
    """Use :meth:`attach`; the callback needs the Trainer (its loss counters are not in the
    callback arguments) and to see ``resume_from_checkpoint``."""

    def __init__(self, *, trainer_name: str | None = None, allow_changes: Iterable[str] = ()) -> None:
        self.trainer: Trainer | None = None
        self.trainer_name = trainer_name          # set by ckptkit's bundled trainers: `ckptkit resume` finds them
        self.allow_changes = frozenset(allow_changes)
        self.resume_from: Path | None = None
        self.saved: dict[str, Any] | None = None  # the resumed checkpoint's record
        self.epoch_start: dict[str, Any] | None = None
        self.first_epoch = True

    @classmethod
    def attach(cls, trainer: Trainer, **options: Any) -> ExactResume:
        """Add the callback to `trainer`; its ``train(resume_from_checkpoint=True)`` then picks the
        newest verified folder, and ``save_total_limit`` rotation waits until a save is verified."""
        callback = cls(**options)
        callback.trainer = trainer
        trainer.add_callback(callback)
        original_train = trainer.train

        # Trainer.train's own signature, so that callers see no difference.
        def train(
            resume_from_checkpoint: str | bool | None = None,
            trial: optuna.Trial | dict[str, Any] | None = None,
            ignore_keys_for_eval: list[str] | None = None,
        ) -> TrainOutput:
            if resume_from_checkpoint is True:
                resume_from_checkpoint = verified_checkpoint(_output_dir(trainer.args))
            callback.prepare(resume_from_checkpoint or None)
            return original_train(
                resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval
            )

        # Replacing the bound method on this one instance is the point: mypy flags any method assignment.
        trainer.train = train  # type: ignore[method-assign]
        _GUARDED_OUTPUT_DIRS.add(str(_output_dir(trainer.args).resolve()))
        return callback

    def prepare(self, resume_from: str | Path | None) -> None:
        self.resume_from = Path(resume_from) if resume_from else None
        self.saved = read_resume_state(self.resume_from) if self.resume_from else None
        self.first_epoch = True

    # -- resume -------------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        if self.resume_from is None:
            return
        if self.saved is None:
            logger.warning("%s was written without ckptkit's ExactResume: Trainer's own resume, not exact",
                           self.resume_from)
            return
        self._refuse_changes(self.saved.get("hyperparameters", {}),
                             hyperparameters(args, state, train_dataloader))
        self._restore_counters(self.saved.get("logging", {}))
        if not args.restore_callback_states_from_checkpoint:
            restore_callback_states(self._trainer(), state)

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        # Runs just before Trainer calls iter(train_dataloader), which draws the epoch's order.
        generators = dataloader_generators(train_dataloader)
        if self.first_epoch and self.saved is not None:
            # Mid-epoch: replay the epoch's start, so iter() draws the order the stopped run drew
            # (Trainer restores rng_state.pth itself after skipping). At an epoch end the states
            # at the save are the next epoch's start.
            states = self.saved["epoch_start"] if self.saved.get("mid_epoch") else self.saved["at_save"]
            restore_random_states(states, generators)
        self.first_epoch = False
        self.epoch_start = capture_random_states(generators)

    # -- save ---------------------------------------------------------------------------------
    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                train_dataloader: Any = None, **kwargs: Any) -> None:
        if not args.should_save:
            return
        folder = _output_dir(args) / f"checkpoint-{state.global_step}"
        params = hyperparameters(args, state, train_dataloader)
        per_epoch = params["batches_per_epoch"]
        accum = args.gradient_accumulation_steps
        # optimizer updates per epoch: a last, partial window still steps
        updates = max(per_epoch // accum + int(per_epoch % accum > 0), 1) if per_epoch else None
        write_resume_state(
            folder,
            {
                "ckptkit": {"trainer": self.trainer_name} if self.trainer_name else {},
                "global_step": state.global_step,
                "mid_epoch": bool(updates and state.global_step % updates),
                "hyperparameters": params,
                "epoch_start": self.epoch_start or capture_random_states(dataloader_generators(train_dataloader)),
                "at_save": capture_random_states(dataloader_generators(train_dataloader)),
                "logging": self._counters(),
            },
        )
        metric = _metric(args, state)
        errors = commit_checkpoint(folder, global_step=state.global_step, epoch=state.epoch,
                                   trainer=self.trainer_name, metric=metric)
        if errors:
            logger.error("%s: not confirmed, a resume passes over it: %s", folder, errors[0])
        rotate(_output_dir(args), args.save_total_limit, state.best_model_checkpoint)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if args.should_save and _output_dir(args).is_dir():
            drop_orphan_manifests(_output_dir(args))

    # -- helpers ------------------------------------------------------------------------------
    def _trainer(self) -> Trainer:
        if self.trainer is None:
            raise RuntimeError("ExactResume needs its Trainer: add it with ExactResume.attach(trainer)")
        return self.trainer

    def _counters(self) -> dict[str, Any]:
        trainer = self._trainer()
        tr_loss = getattr(trainer, "_tr_loss", None)
        return {"tr_loss": float(tr_loss.item()) if isinstance(tr_loss, torch.Tensor) else 0.0,
                "total_loss_scalar": float(getattr(trainer, "_total_loss_scalar", 0.0)),
                "globalstep_last_logged": int(getattr(trainer, "_globalstep_last_logged", 0)),
                "initial_global_step": int(getattr(trainer, "_initial_global_step", 0))}

    def _restore_counters(self, saved: dict[str, Any]) -> None:
        # The loss logged next, and train_loss at the end, average over the same steps as the
        # uninterrupted run's (Trainer restarts these sums at the resumed step).
        trainer = self._trainer()
        if not saved:
            return
        trainer._tr_loss = torch.tensor(saved["tr_loss"], device=trainer.args.device)
        trainer._total_loss_scalar = saved["total_loss_scalar"]
        trainer._globalstep_last_logged = saved["globalstep_last_logged"]
        trainer._initial_global_step = saved["initial_global_step"]

    def _refuse_changes(self, before: dict[str, Any], now: dict[str, Any]) -> None:
        changed = [(k, before[k], now.get(k)) for k in before if k in now and before[k] != now[k]]
        refused = [c for c in changed if c[0] not in HARMLESS and c[0] not in self.allow_changes]
        for key, old, new in changed:
            if (key, old, new) not in refused:
                logger.warning("%s: %s was %r, now %r", self.resume_from, key, old, new)
        if refused:
            listed = "; ".join(f"{k} was {old!r} at the save, now {new!r}" for k, old, new in refused)
            raise ResumeRefusedError(self.resume_from, f"resuming with other arguments would shift the batches "
                                     f"or the learning-rate schedule: {listed}. Resume with the saved values, "
                                     f"or allow a deliberate change with ExactResume(allow_changes=...)")


_GUARDED_OUTPUT_DIRS: set[str] = set()
_trainer_rotate = hf_trainer_module.rotate_checkpoints


def _rotate_after_verification(output_dir: str, *args: Any, **kwargs: Any) -> None:
    """Trainer rotates inside the save, before anything checked the folder it wrote; for an
    output_dir under ExactResume, rotation runs in on_save once the folder is verified."""
    if str(Path(output_dir).resolve()) in _GUARDED_OUTPUT_DIRS:
        return
    _trainer_rotate(output_dir, *args, **kwargs)


_trainer_sort = hf_trainer_module.sort_checkpoints


def _sort_sparing_newest_verified(output_dir: str, *args: Any, **kwargs: Any) -> list[str]:
    """With save_total_limit=1, Trainer's _finalize_training deletes every folder this returns
    except the best: under ExactResume the newest verified folder is not offered (a resume
    that extends the run needs it)."""
    folders = _trainer_sort(output_dir, *args, **kwargs)
    if str(Path(output_dir).resolve()) not in _GUARDED_OUTPUT_DIRS:
        return folders
    keep = newest_verified(Path(output_dir))
    return [f for f in folders if keep is None or Path(f).resolve() != keep.resolve()]


hf_trainer_module.rotate_checkpoints = _rotate_after_verification
hf_trainer_module.sort_checkpoints = _sort_sparing_newest_verified


def hyperparameters(args: TrainingArguments, state: TrainerState, train_dataloader: Any) -> dict[str, Any]:
    """The arguments a resume must share with the run it continues (names as TrainingArguments has them)."""
    dataset = getattr(train_dataloader, "dataset", None)
    values: dict[str, Any] = {name: getattr(args, name, None) for name in (*DATA_ORDER, *SCHEDULE, *HARMLESS)}
    values["train_samples"] = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
    values["batches_per_epoch"] = len(train_dataloader) if hasattr(train_dataloader, "__len__") else None
    values["max_steps"] = state.max_steps   # what Trainer derived from epochs, or args.max_steps
    return {k: (float(v) if isinstance(v, float) else v if isinstance(v, (int, str, bool, type(None))) else str(v))
            for k, v in values.items()}


def dataloader_generators(loader: Any) -> dict[str, torch.Generator]:
    """Every torch.Generator the loader draws its order from, by where it sits
    (``generator``, ``sampler.generator``, ``batch_sampler.sampler.generator``...)."""
    found: dict[str, torch.Generator] = {}
    seen: set[int] = set()

    def visit(obj: Any, path: str, depth: int) -> None:
        if obj is None or depth > 3:
            return
        for attr in ("generator", "sampler", "batch_sampler", "base_dataloader"):
            child = getattr(obj, attr, None)
            name = f"{path}.{attr}" if path else attr
            if isinstance(child, torch.Generator):
                if id(child) not in seen:
                    seen.add(id(child))
                    found[name] = child
            elif child is not None and child is not obj:
                visit(child, name, depth + 1)

    visit(loader, "", 0)
    return found


def capture_random_states(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    states: dict[str, Any] = {"torch_cpu": _b64(torch.get_rng_state()),
                              "generators": {name: _b64(g.get_state()) for name, g in generators.items()}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch_cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return states


def restore_random_states(states: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(_unb64(states["torch_cpu"]))
    if "torch_cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in states["torch_cuda"]])
    saved = states.get("generators", {})
    if unknown := sorted(set(generators) - set(saved)):
        raise ResumeRefusedError(None, f"the train dataloader draws from {', '.join(unknown)}, which the checkpoint "
                                 "did not record: its data order cannot be replayed")
    # A recorded generator the fresh loader does not have yet is one its sampler creates and seeds
    # itself inside iter() (accelerate's SeedableRandomSampler: seed + epoch): nothing to restore.
    for name, generator in generators.items():
        generator.set_state(_unb64(saved[name]))


def _output_dir(args: TrainingArguments) -> Path:
    """Typed optional, but TrainingArguments.__post_init__ fills in "trainer_output" when not given."""
    assert args.output_dir is not None, "TrainingArguments.__post_init__ sets it"
    return Path(args.output_dir)


def restore_callback_states(trainer: Trainer, state: TrainerState) -> None:
    """EarlyStopping's patience (and any exportable callback's attributes) as saved in
    trainer_state.json, which Trainer restores only with restore_callback_states_from_checkpoint."""
    # Typed as a list of callbacks, but TrainerState.__post_init__ turns it into the saved states
    # by class name (a dict, as trainer_state.json stores it).
    stored = cast("dict[str, Any]", state.stateful_callbacks)
    for callback in trainer.callback_handler.callbacks:
        if not isinstance(callback, ExportableState) or isinstance(callback, TrainerControl):
            continue
        saved = stored.get(type(callback).__name__)
        saved = saved[0] if isinstance(saved, list) and saved else saved
        if isinstance(saved, dict):
            for attribute, value in saved.get("attributes", {}).items():
                setattr(callback, attribute, value)


def _metric(args: TrainingArguments, state: TrainerState) -> dict[str, Any] | None:
    name = args.metric_for_best_model
    if not name:
        return None
    key = name if name.startswith("eval_") else f"eval_{name}"
    value = next((e[key] for e in reversed(state.log_history) if key in e and e.get("step") == state.global_step), None)
    return {"name": key, "value": value, "mode": "max" if args.greater_is_better else "min"}


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

