"""A `trainer_state.json` for a `--to hf` folder whose source has none, from its Progress.

What transformers 5.23 reads on `Trainer.train(resume_from_checkpoint=DIR)`:
`TrainerState.load_from_json` (`TrainerState(**json)`: unknown keys raise, so only its fields are
written), then `compare_trainer_and_checkpoint_args`, which computes `train_batch_size // n_gpu`
(a null there raises) and warns where `logging_steps` / `eval_steps` / `save_steps` differ from
the arguments. The resumed loop then uses the file's `global_step` alone for the data position:
`global_step // num_update_steps_per_epoch` epochs skipped, the remainder times the accumulation
in batches; it keeps the file's `logging_steps` / `eval_steps` / `save_steps` (null would raise
in `DefaultFlowCallback`), `best_metric`, `log_history`, `total_flos`; it overwrites `max_steps`
and `num_train_epochs` with the new run's. Every value not read from the source is named in a note.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from ckptkit.core.checkpoint import Checkpoint, Progress
from ckptkit.views import sections as S

# Metrics some families keep for their best model, and whether Trainer's best_metric means the same.
BEST_METRICS = ("best_val_loss", "best_metric", "best_val_f1", "best_val_acc")
BATCH_SIZE_FIELDS = ("train_batch_size", "per_device_train_batch_size", "batch_size")
DEFAULT_INTERVAL = 500   # TrainerState's own default for logging_steps / eval_steps / save_steps


@dataclass
class HFTrainerState:
    document: dict[str, Any] | None          # the trainer_state.json to write, or None
    notes: list[str] = field(default_factory=list)
    carried: set[str] = field(default_factory=set)   # the source's top-level keys it holds the values of


def trainer_state_from_progress(ckpt: Checkpoint, output_name: str | None) -> HFTrainerState:
    """Trainer's state for a checkpoint without one: None when its progress has no global step."""
    p = ckpt.progress
    if p.global_step is None:
        return HFTrainerState(None)
    where = p.sources.get("global_step", "the source's progress")
    out = HFTrainerState(None, [f"trainer_state.json written from the source's progress: global_step "
                                f"{p.global_step} ({where}); Trainer derives the data position from it alone "
                                "(global_step // its steps per epoch epochs, the rest x gradient accumulation "
                                "batches skipped), so the resume is exact only with the source's batches per "
                                "epoch and accumulation"])
    epoch = _epoch(p, out.notes)
    best = _best_metric(ckpt, out)
    state: dict[str, Any] = {
        "epoch": epoch, "global_step": p.global_step, "max_steps": p.max_steps or 0,
        "logging_steps": DEFAULT_INTERVAL, "eval_steps": DEFAULT_INTERVAL, "save_steps": DEFAULT_INTERVAL,
        "train_batch_size": _batch_size(ckpt, out.notes), "num_train_epochs": 0,
        "num_input_tokens_seen": 0, "total_flos": 0, "log_history": _log_history(ckpt, p.global_step, out),
        "best_metric": best, "best_global_step": None, "best_model_checkpoint": None,
        "is_local_process_zero": True, "is_world_process_zero": True, "is_hyper_param_search": False,
        "trial_name": None, "trial_params": None, "stateful_callbacks": {},
    }
    out.notes.append("trainer_state.json: logging_steps, eval_steps, save_steps written as TrainerState's defaults "
                     f"({DEFAULT_INTERVAL}; the source records no Trainer intervals): a resumed Trainer uses these, "
                     "not its arguments (it warns where they differ); total_flos and num_input_tokens_seen start "
                     "at 0 (not counted by the source); max_steps and num_train_epochs are replaced by the resumed "
                     "run's own")
    folder = f"checkpoint-{p.global_step}"
    if output_name is not None and output_name != folder:
        out.notes.append(f"Trainer names this step's folder {folder}: resume_from_checkpoint=True "
                         "(get_last_checkpoint) finds only folders named checkpoint-N; pass the path explicitly "
                         "or rename it")
    out.document = state
    tree = ckpt.tree if isinstance(ckpt.tree, dict) else {}
    out.carried |= {str(k) for k in tree if k in S.COUNTER_KEYS}   # read into global_step / epoch
    return out


def _epoch(p: Progress, notes: list[str]) -> float:
    """HF's float epoch, as Trainer counts it: whole epochs done + batches done in the next / batches per epoch."""
    done, step, per_epoch = p.epochs_completed, p.step_in_epoch, p.steps_per_epoch
    if p.epoch_float is not None:
        epoch, how = float(p.epoch_float), "the source's own float epoch"
    elif done is not None and p.epoch_complete:
        epoch, how = float(done), f"{done} epochs completed, at the epoch's end"
    elif done is not None and step is not None and per_epoch:
        epoch, how = done + step / per_epoch, f"{done} epochs + {step}/{per_epoch} batches, as Trainer counts it"
    elif per_epoch:
        notes.append(f"trainer_state.json epoch = global_step / steps per epoch = {p.global_step}/{per_epoch}, "
                     "APPROXIMATE: the source records no position inside the epoch, and this assumes one "
                     "optimizer step per batch")
        return p.global_step / per_epoch   # type: ignore[operator]
    elif done is not None:
        notes.append(f"trainer_state.json epoch = {done}, APPROXIMATE (whole epochs only): the source records no "
                     "position inside the epoch and no steps per epoch")
        return float(done)
    else:
        notes.append("trainer_state.json epoch = 0: the source records no epoch (Trainer recomputes it as it trains)")
        return 0.0
    notes.append(f"trainer_state.json epoch = {epoch:g} ({how})")
    return epoch


def _best_metric(ckpt: Checkpoint, out: HFTrainerState) -> float | None:
    found = [(k, ckpt.metrics[k]) for k in BEST_METRICS if S.is_number(ckpt.metrics.get(k))]
    if not found:
        return None
    key, value = found[0]
    if not math.isfinite(value):
        out.notes.append(f"trainer_state.json best_metric = null: the source's {key} is {value} (no best yet)")
        return None
    out.carried.add(key)
    out.notes.append(f"trainer_state.json best_metric = the source's {key} ({value}); best_global_step and "
                 "best_model_checkpoint null (not recorded): Trainer compares it with metric_for_best_model, "
                 "so set that (and greater_is_better) to the same metric")
    return float(value)


def _batch_size(ckpt: Checkpoint, notes: list[str]) -> int:
    """`compare_trainer_and_checkpoint_args` divides it: it must be an int, never null."""
    config = ckpt.config if isinstance(ckpt.config, dict) else {}
    for name in BATCH_SIZE_FIELDS:
        size = S.as_int(config.get(name))
        if size is not None and size > 0:
            notes.append(f"trainer_state.json train_batch_size = {size} (config field {name}, per process)")
            return size
    notes.append("trainer_state.json train_batch_size = 0: the source records no batch size; Trainer only warns "
                 "that it differs from per_device_train_batch_size, but with auto_find_batch_size it would "
                 "start from it and stop: set it to the run's batch size first")
    return 0


def _log_history(ckpt: Checkpoint, global_step: int, out: HFTrainerState) -> list[dict[str, Any]]:
    """Only histories whose every entry is a dict of numbers with its step copy over, as saved."""
    entries: list[tuple[int, int, dict[str, Any]]] = []
    used, left = [], []
    for order, (name, history) in enumerate(sorted(ckpt.histories.items())):
        if _steps_logged(history, global_step):
            entries += [(int(e["step"]), order, dict(e)) for e in history]
            used.append(name)
        else:
            left.append(name)
    out.carried.update(used)
    if used:
        out.notes.append(f"trainer_state.json log_history: {len(entries)} entries of {', '.join(used)} copied as saved "
                     "(their own key names, not Trainer's loss / eval_loss / learning_rate), ordered by step")
    if left:
        out.notes.append(f"trainer_state.json log_history leaves out {', '.join(left)}: not a list of dicts each with "
                     f"its 'step' (1..{global_step}) and numbers only, so it does not map to Trainer's log entries")
    return [e for _, _, e in sorted(entries, key=lambda item: (item[0], item[1]))]


def _steps_logged(history: Any, global_step: int) -> TypeGuard[list[dict[str, Any]]]:
    if not isinstance(history, list) or not history:
        return False
    return all(isinstance(e, dict) and isinstance(e.get("step"), int) and not isinstance(e["step"], bool)
               and 0 <= e["step"] <= global_step and all(S.is_number(v) for v in e.values()) for e in history)

