"""Hugging Face Trainer `checkpoint-{step}/` folders (HF Trainer LoRA ranker), full fine-tunes and LoRA adapters.

Members (transformers `Trainer._save_checkpoint`): weights (`model.safetensors`,
`pytorch_model.bin`, a sharded `*.index.json`, or peft's `adapter_model.*` +
`adapter_config.json`), `optimizer.pt` (or `optimizer.bin`), `scheduler.pt`, `scaler.pt` (fp16
AMP), `rng_state.pth` / `rng_state_{rank}.pth`, `trainer_state.json`, `training_args.bin`.
Progress lives in `trainer_state.json`: `global_step` counts optimizer updates, the float
`epoch` counts micro-batches (so with gradient accumulation it is not global_step / steps per
epoch), `max_steps` is the planned total. Without that file a resume restarts at step 0.
"""
from __future__ import annotations

import math
import re
import shlex
from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Checkpoint, Progress, ResumePrediction, Severity
from ckptkit.core.errors import NotACheckpointError
from ckptkit.formats.accelerate_state import read_fsdp_models, read_fsdp_optimizer
from ckptkit.formats.folder import FolderReading, has_weights, member_names, subfolders
from ckptkit.views import sections as S

TRAINER_STATE = "trainer_state.json"
TRAINING_ARGS = "training_args.bin"
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
SCHEDULER_FILE = "scheduler.pt"
SCALER_FILE = "scaler.pt"
DEEPSPEED_LATEST = "latest"     # DeepSpeed's save_checkpoint: the tag (global_stepN) load_checkpoint resumes
RNG_FILE = re.compile(r"rng_state(_\d+)?\.pth$")
ADAPTER_CONFIG = "adapter_config.json"
# Written into the folder by ckptkit.integrations.hf.ExactResume: what an exact resume needs that
# Trainer does not keep, and which bundled trainer (if any) wrote the folder.
EXACT_RESUME_STATE = "ckptkit_resume.json"


class HFTrainerFormat:
    name = "hf-trainer"
    description = "Hugging Face Trainer checkpoint-N/ folder (trainer_state.json, optimizer.pt, weights)"

    def sniff(self, path: Path, head: bytes) -> bool:
        names = member_names(path)
        if TRAINER_STATE in names or TRAINING_ARGS in names:
            return True
        # A checkpoint whose trainer_state.json was lost is still one: weights plus training state.
        training = any(n in names for n in ("optimizer.pt", SCHEDULER_FILE)) or any(map(RNG_FILE.match, names))
        return training and has_weights(names)

    def read(self, path: Path) -> Checkpoint:
        names = member_names(path)
        if not names:
            raise NotACheckpointError(path, "empty folder")
        reading = FolderReading(path)
        model: dict[str, Any] | None = reading.read_weights(names)
        if not model and not reading.findings:
            model = _weights_elsewhere(reading, names)
        if model is None:
            reading.add_finding("folder.missing-weights", Severity.ERROR, "",
                                "no model or adapter weights (model.safetensors, pytorch_model.bin, "
                                "adapter_model.*, a sharded index, or an FSDP or DeepSpeed checkpoint of "
                                "the model): a resume cannot load the model")
            model = {}
        state = _trainer_state(reading, names)
        args = _training_args(reading, names)
        sections = read_training_state(reading, names, saved_only_model=bool(args and args.get("save_only_model")))
        adapter = reading.read_json(ADAPTER_CONFIG, "LoRA adapter config") if ADAPTER_CONFIG in names else None
        resume_state = (reading.read_json(EXACT_RESUME_STATE, "ckptkit exact-resume state")
                        if EXACT_RESUME_STATE in names else None)
        ckpt = reading.finish(self.name, "lora-adapter" if ADAPTER_CONFIG in names else "full-model",
                              hf_progress(state, args))
        ckpt.model = model
        for attr, value in sections.items():
            setattr(ckpt, attr, value)
        if adapter is not None:
            ckpt.extra["adapter_config"] = adapter
        if args is not None:
            ckpt.config, ckpt.sources["config"] = args, TRAINING_ARGS
        ckpt.progress.resume = trainer_resume(ckpt.progress, args, exact=isinstance(resume_state, dict))
        if isinstance(state, dict):
            _fill_trainer_state(ckpt, state)
        if isinstance(resume_state, dict) and isinstance(resume_state.get("ckptkit"), dict):
            ckpt.extra["ckptkit"] = resume_state["ckptkit"]
        return ckpt


def _weights_elsewhere(reading: FolderReading, names: set[str]) -> dict[str, Any] | None:
    """The model of a Trainer run under FSDP or DeepSpeed, which may write no model.safetensors,
    as `Trainer._load_from_checkpoint` and `deepspeed_load_checkpoint` find it; None when there
    is none. FSDP: what accelerate's `save_fsdp_model` writes (`read_fsdp_models`; the Trainer
    takes any subfolder whose name holds "pytorch_model_fsdp"). DeepSpeed (ZeRO-3 without
    `stage3_gather_16bit_weights_on_model_save`): only its `global_stepN/` folder, which ckptkit
    does not read; said so."""
    fsdp = read_fsdp_models(reading, names)
    if fsdp is not None:
        return fsdp
    deepspeed = next((name for name in subfolders(reading.path) if name.startswith("global_step")), None)
    if deepspeed is not None:
        reading.add_finding("folder.weights-in-deepspeed", Severity.INFO, deepspeed,
                            "no model.safetensors: the model's weights are in DeepSpeed's own checkpoint "
                            f"({deepspeed}/, which the Trainer restores through deepspeed_load_checkpoint); ckptkit "
                            "does not read DeepSpeed's files", "DeepSpeed's zero_to_fp32.py (saved in the checkpoint "
                            "folder) gathers them into one state dict")
        return {}
    return None


def _optimizer_elsewhere(path: Path) -> str | None:
    """Where a distributed Trainer keeps the optimizer instead of optimizer.pt: "deepspeed" for a
    DeepSpeed checkpoint (its global_step*/ folder), or the FSDP sharded optimizer's folder (the
    Trainer counts any subfolder named with "optimizer", as _load_optimizer_and_scheduler does)."""
    folders = subfolders(path)
    if any(name.startswith("global_step") for name in folders):
        return "deepspeed"
    return next((name for name in folders if "optimizer" in name), None)


def _deepspeed_tag(reading: FolderReading) -> None:
    """The Trainer resumes a DeepSpeed checkpoint through `deepspeed_load_checkpoint`, whose
    engine.load_checkpoint(folder) (tag None) reads the tag to load from the folder's `latest`
    file, written by DeepSpeed's save_checkpoint beside its global_stepN/: without it the engine
    returns no path and the Trainer raises "[deepspeed] failed to resume from checkpoint"; a tag
    naming a folder that is not there fails to load too."""
    folders = sorted((name for name in subfolders(reading.path) if name.startswith("global_step")),
                     key=lambda name: (len(name), name))      # global_step8 before global_step10
    latest = reading.path / DEEPSPEED_LATEST
    if not latest.is_file():
        reading.add_finding("folder.missing-member", Severity.ERROR, DEEPSPEED_LATEST,
                            f"no '{DEEPSPEED_LATEST}' file beside DeepSpeed's {', '.join(folders)}/: DeepSpeed's "
                            "load_checkpoint reads the tag to resume from there, finds none and loads nothing, and "
                            "the Trainer stops with '[deepspeed] failed to resume from checkpoint'",
                            f"echo {folders[-1]} > {shlex.quote(str(latest))} (the tag of the folder to resume)")
        return
    try:
        tag = latest.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reading.add_finding("folder.unreadable-member", Severity.ERROR, DEEPSPEED_LATEST,
                            f"DeepSpeed's '{DEEPSPEED_LATEST}' file cannot be read ({exc}): the resume fails")
        return
    if tag not in folders:
        reading.add_finding("folder.missing-member", Severity.ERROR, DEEPSPEED_LATEST,
                            f"DeepSpeed's '{DEEPSPEED_LATEST}' file names the tag {tag[:60]!r}, but this folder holds "
                            f"{', '.join(folders)}/: DeepSpeed's load_checkpoint looks for {tag[:60]}/ and the resume "
                            "fails", f"echo {folders[-1]} > {shlex.quote(str(latest))} (the tag of the folder to "
                            "resume)")


def _optimizer_without_scheduler(reading: FolderReading, opt_file: str | None, has_scheduler: bool,
                                 saved_only_model: bool) -> None:
    """Trainer._load_optimizer_and_scheduler loads optimizer.pt and scheduler.pt only when both
    are there: without either, a resume starts both from scratch, silently. (The scheduler the
    Trainer builds anew starts at step 0: warmup again, and the decay is global_step behind.)"""
    if opt_file is not None and has_scheduler:
        return
    lost = ("a resume starts the optimizer (Adam moments lost) and the learning-rate schedule (warmup again) "
            "from scratch")
    if opt_file is None and not has_scheduler:
        why = ("TrainingArguments(save_only_model=True) saved only the model" if saved_only_model
               else "no optimizer.pt or scheduler.pt")
        reading.add_finding("folder.missing-optimizer", Severity.WARNING, "optimizer.pt", f"{why}: {lost}")
    elif opt_file is None:
        reading.add_finding("folder.missing-optimizer", Severity.WARNING, "optimizer.pt",
                            f"no optimizer.pt: the Trainer loads scheduler.pt only together with it, so {lost}")
    else:
        reading.add_finding("folder.missing-scheduler", Severity.WARNING, SCHEDULER_FILE,
                            f"no scheduler.pt: the Trainer loads {opt_file} only together with it, so {lost}, "
                            f"although {opt_file} is here")


def _trainer_state(reading: FolderReading, names: set[str]) -> dict[str, Any] | None:
    if TRAINER_STATE not in names:
        reading.add_finding("folder.missing-trainer-state", Severity.ERROR, TRAINER_STATE,
                            "no trainer_state.json: resume would restart at step 0 (global_step, epoch, "
                            "log_history and the best metric are lost), although the weights and optimizer "
                            "are from later in training")
        return None
    state = reading.read_json(TRAINER_STATE, "trainer state")
    if state is not None and not isinstance(state, dict):
        reading.add_finding("folder.unreadable-member", Severity.ERROR, TRAINER_STATE,
                            "trainer state is not a JSON object: resume would restart at step 0")
        return None
    return state


def _training_args(reading: FolderReading, names: set[str]) -> dict[str, Any] | None:
    if TRAINING_ARGS not in names:
        return None
    member = reading.open_member(TRAINING_ARGS, "training arguments", classes_expected=True)
    if member is None:
        return None
    fields = S.config_fields(member.tree)
    return fields if isinstance(fields, dict) else None


def read_training_state(reading: FolderReading, names: set[str], saved_only_model: bool = False) -> dict[str, Any]:
    """Optimizer, scheduler, scaler and RNG members -> {section: content}; sources noted on `reading`."""
    sections: dict[str, Any] = {}
    optimizer = _read_optimizer(reading, names, saved_only_model)
    if optimizer is not None:
        sections["optimizer"] = optimizer
    for attr, name, role in (("scheduler", SCHEDULER_FILE, "scheduler"), ("scaler", SCALER_FILE, "AMP scaler")):
        if name in names:
            member = reading.open_member(name, role)
            if member is not None:
                sections[attr], reading.sources[attr] = member.tree, name
    rng_files = sorted(n for n in names if RNG_FILE.match(n))
    rng = {}
    for name in rng_files:
        member = reading.open_member(name, "RNG state", numpy_allowed=True)   # Trainer._load_rng_state: safe_globals()
        if member is not None:
            rng[name] = member.tree
    if rng:
        sections["rng"] = rng[rng_files[0]] if len(rng) == 1 else rng
        reading.sources["rng"] = ", ".join(rng)
    else:
        reading.add_finding("folder.missing-rng", Severity.INFO, "rng_state.pth",
                            "no rng_state.pth: a resume will not reproduce the data order and dropout exactly")
    return sections


def _read_optimizer(reading: FolderReading, names: set[str], saved_only_model: bool) -> Any:
    """optimizer.pt (or FSDP's optimizer.bin), else FSDP's sharded optimizer folder; DeepSpeed's
    own checkpoint is named, not read (its `latest` tag is checked). Whether the Trainer will load
    it, which takes scheduler.pt beside it, is said on `reading`."""
    optimizer = None
    opt_file = next((n for n in OPTIMIZER_FILES if n in names), None)
    if opt_file is not None:
        member = reading.open_member(opt_file, "optimizer")
        if member is not None:
            optimizer, reading.sources["optimizer"] = member.tree, opt_file
    sharded = _optimizer_elsewhere(reading.path)
    if sharded == "deepspeed":
        _deepspeed_tag(reading)     # DeepSpeed's engine restores its own optimizer and scheduler
    else:
        if opt_file is None and sharded is not None:
            optimizer = read_fsdp_optimizer(reading, sharded)
        _optimizer_without_scheduler(reading, opt_file or sharded, SCHEDULER_FILE in names, saved_only_model)
    return optimizer


def _fill_trainer_state(ckpt: Checkpoint, state: dict[str, Any]) -> None:
    for key in ("best_metric", "best_global_step", "total_flos", "num_input_tokens_seen"):
        if S.is_number(state.get(key)):
            ckpt.metrics[key] = state[key]
    if state.get("best_model_checkpoint"):
        ckpt.extra["best_model_checkpoint"] = state["best_model_checkpoint"]
    if isinstance(state.get("log_history"), list):
        ckpt.histories["log_history"] = state["log_history"]


def trainer_resume(p: Progress, args: dict[str, Any] | None, exact: bool) -> ResumePrediction | None:
    """What `Trainer.train(resume_from_checkpoint=folder)` does with it (transformers' trainer.py,
    `_inner_training_loop`): epochs_trained = global_step // updates per epoch, and the first
    (global_step % updates per epoch) x gradient_accumulation_steps batches of the next epoch
    are skipped; optimizer, scheduler, scaler and RNG come from the folder. Not restored: the
    callbacks' state unless restore_callback_states_from_checkpoint=True, and the order of a data
    loader with a generator of its own (drawn before rng_state.pth is restored). ckptkit's
    ExactResume (ckptkit_resume.json in the folder) restores both."""
    if p.global_step is None:
        return None
    accum = S.as_int(args.get("gradient_accumulation_steps")) if isinstance(args, dict) else None
    start_epoch = start_batch = None
    if p.training_finished:
        return ResumePrediction("HF Trainer", "train(resume_from_checkpoint=...)", None, None, p.global_step,
                                [], ["training already reached max_steps: train() ends at once unless "
                                     "max_steps or num_train_epochs is raised"])
    if p.steps_per_epoch and accum:
        start_epoch = p.global_step // p.steps_per_epoch + 1
        start_batch = p.global_step % p.steps_per_epoch * accum
    loses = [] if exact else [
        "early-stopping patience restarts unless restore_callback_states_from_checkpoint=True",
        "a data loader with a generator of its own draws another order for the resumed epoch"]
    return ResumePrediction("HF Trainer", "train(resume_from_checkpoint=...)", start_epoch, start_batch,
                            p.global_step, ["optimizer", "scheduler", "scaler", "RNG"], loses)


def hf_progress(state: dict[str, Any] | None, args: dict[str, Any] | None) -> Progress:
    """trainer_state.json (and training_args.bin, when present) -> Progress."""
    p = Progress()
    if state is None:
        p.notes.append("no trainer_state.json: a resume would restart at global step 0")
        return p
    p.global_step = S.as_int(state.get("global_step"))
    if p.global_step is not None:
        p.sources["global_step"] = f"trainer_state.json global_step = {p.global_step} (optimizer updates)"
    epoch = state.get("epoch")
    if S.is_number(epoch):
        p.epoch_float = float(epoch)
        p.sources["epoch_float"] = f"trainer_state.json epoch = {epoch:g} (counts micro-batches)"
    p.max_steps = S.as_int(state.get("max_steps")) or None
    if p.max_steps is not None:
        p.sources["max_steps"] = f"trainer_state.json max_steps = {p.max_steps}"
    p.steps_per_epoch = _steps_per_epoch(state, args, p)
    _place_in_epoch(p)
    stop = _should_training_stop(state)
    if p.global_step is not None and p.max_steps is not None:
        p.training_finished = p.global_step >= p.max_steps or bool(stop)
    elif stop is not None:
        p.training_finished = stop
    return p


def _steps_per_epoch(state: dict[str, Any], args: dict[str, Any] | None, p: Progress) -> int | None:
    # 1. A log entry at an exact epoch boundary gives updates per epoch directly.
    for entry in state.get("log_history") or []:
        step = S.as_int(entry.get("step")) if isinstance(entry, dict) else None
        if step and S.is_number(entry.get("epoch")):
            ep = float(entry["epoch"])
            if ep >= 1 and ep.is_integer():
                spe = step // int(ep)
                p.sources["steps_per_epoch"] = (f"trainer_state.json log_history: step {entry['step']} "
                                                f"logged at epoch {ep:g}")
                return spe
    # 2. max_steps / num_train_epochs, when the user did not set max_steps (it was derived from epochs).
    epochs = S.as_int(state.get("num_train_epochs"))
    user_max = S.as_int(args.get("max_steps")) if args else None
    if p.max_steps and epochs and p.max_steps % epochs == 0 and (args is None or (user_max or 0) <= 0):
        p.sources["steps_per_epoch"] = (f"max_steps {p.max_steps} / num_train_epochs {epochs}"
                                        + ("" if args else " (assuming max_steps was derived from epochs)"))
        return p.max_steps // epochs
    return None


def _place_in_epoch(p: Progress) -> None:
    if p.epoch_float is None:
        return
    # The float epoch is a sum of fractions; 1.9999999 is the end of epoch 2, not inside it.
    rounded = round(p.epoch_float)
    near_boundary = math.isclose(p.epoch_float, rounded, abs_tol=1e-6)
    p.epochs_completed = rounded if near_boundary else math.floor(p.epoch_float)
    p.epoch_complete = near_boundary
    p.sources["epochs_completed"] = f"whole part of trainer_state.json epoch {p.epoch_float:g}"
    if near_boundary:
        p.step_in_epoch = 0
    elif p.steps_per_epoch and p.global_step is not None:
        p.step_in_epoch = p.global_step - p.epochs_completed * p.steps_per_epoch
        p.sources["step_in_epoch"] = "global_step - epochs completed x steps per epoch"


def _should_training_stop(state: dict[str, Any]) -> bool | None:
    control = (state.get("stateful_callbacks") or {}).get("TrainerControl")
    if isinstance(control, dict) and isinstance(control.get("args"), dict):
        value = control["args"].get("should_training_stop")
        return value if isinstance(value, bool) else None
    return None
