"""Layout families of single-file checkpoints, and their mapping to one `Progress`.

A family is a dict layout some training system writes (see DESIGN.md's format table and the
seeds). Each family says how to recognise it and what its counters mean; sections (model,
optimizer, ...) are found the same way for all of them (`ckptkit.views.sections`).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Checkpoint, Progress
from ckptkit.formats.base import security_findings
from ckptkit.storage.safe_pickle import GlobalRef, PickledObject
from ckptkit.views import sections as S

Tree = dict[str, Any]


KeyPath = tuple[str, ...]
CounterValues = dict[KeyPath, Any]


class UnrepresentableProgress(ValueError):
    """A family's counters cannot express the requested progress (e.g. mid-epoch for recsys)."""


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    matches: Callable[[Tree], bool]
    progress: Callable[[Tree, Path], Progress]
    # The inverse of `progress`: the stored counter values (by key path) that make `progress`
    # read back (epochs_completed, step_in_epoch). None: the family cannot record an epoch.
    record: Callable[[Tree, int, int], CounterValues] | None = None
    # Progress fields the family reads straight from one top-level key, as (field, key): what a
    # writer sets so that `progress` reads them back (e.g. global_step from nanoGPT's 'iter_num').
    plain_counters: tuple[tuple[str, str], ...] = ()


def _recsys_progress(tree: Tree, path: Path) -> Progress:
    p = Progress()
    epoch = S.as_int(tree.get("epoch"))
    if epoch is not None:
        p.epochs_completed, p.epoch_complete = epoch + 1, True
        p.sources["epochs_completed"] = (f"key 'epoch' = {epoch}: 0-based index of the last finished "
                                         f"epoch (saved at each epoch's end); a resume starts at epoch {epoch + 1}")
    else:
        p.notes.append("no 'epoch' key: a resume would restart at epoch 0")
    if path.name.endswith(".final"):
        p.training_finished = True
        p.sources["training_finished"] = "file name ends with '.final' (written when training completed)"
    _ckptkit_counters(tree, p)  # ckptkit's recsys trainer: 'epoch' stays the last finished one mid-epoch
    return p


def _recsys_record(tree: Tree, epochs: int, step: int) -> CounterValues:
    if isinstance(tree.get("data_position"), dict):
        # ckptkit's trainer: data_position says where in the epoch; 'epoch' keeps its own meaning
        return {**_experiment_record(tree, epochs, step), ("epoch",): epochs - 1}
    _whole_epochs_only(step, "this layout saves at epoch ends only ('epoch' = index of the last finished epoch)")
    return {("epoch",): epochs - 1}


def _retrieval_progress(tree: Tree, path: Path) -> Progress:
    p = Progress()
    epoch = S.as_int(tree.get("epoch"))
    if epoch is not None:
        p.epochs_completed, p.epoch_complete = epoch, True
        p.sources["epochs_completed"] = f"key 'epoch' = {epoch}, stored as epoch+1"
        p.notes.append(f"epoch is stored as epoch+1 (this layout's convention): {epoch} epochs are "
                       f"complete and a resume starts at 0-based epoch {epoch}")
    else:
        p.notes.append("no 'epoch' key: a resume would restart at epoch 0")
    _ckptkit_counters(tree, p)
    return p


def _ckptkit_counters(tree: Tree, p: Progress) -> None:
    """ckptkit's trainer adds global_step and data_position to this layout: a checkpoint taken
    inside an epoch (an interrupt) says where in it, which 'epoch' alone cannot."""
    p.global_step = S.as_int(tree.get("global_step"))
    if p.global_step is not None:
        p.sources["global_step"] = f"key 'global_step' = {p.global_step}"
    position = tree.get("data_position")
    if not isinstance(position, dict) or S.as_int(position.get("batch_in_epoch")) is None:
        return
    p.step_in_epoch = S.as_int(position.get("batch_in_epoch"))
    p.steps_per_epoch = S.as_int(position.get("steps_per_epoch"))
    p.epoch_complete = p.step_in_epoch == 0
    p.sources["step_in_epoch"] = "key 'data_position' (written by ckptkit's checkpoint manager)"


def _retrieval_record(tree: Tree, epochs: int, step: int) -> CounterValues:
    if isinstance(tree.get("data_position"), dict):
        # ckptkit's trainer: 'epoch' (epochs completed) repeats data_position.epoch, as in seed 004's
        return _experiment_record(tree, epochs, step)
    _whole_epochs_only(step, "this layout stores finished epochs only ('epoch' = epochs completed, as epoch+1)")
    return {("epoch",): epochs}


def _experiment_progress(tree: Tree, path: Path) -> Progress:
    p = Progress()
    p.global_step = S.as_int(tree.get("global_step"))
    if p.global_step is not None:
        p.sources["global_step"] = f"key 'global_step' = {p.global_step}"
    position = tree.get("data_position")
    if isinstance(position, dict) and S.as_int(position.get("epoch")) is not None:
        p.epochs_completed = S.as_int(position.get("epoch"))
        p.step_in_epoch = S.as_int(position.get("batch_in_epoch")) or 0
        p.steps_per_epoch = S.as_int(position.get("steps_per_epoch"))
        p.epoch_complete = p.step_in_epoch == 0
        p.sources["epochs_completed"] = "key 'data_position' (written by ckptkit's checkpoint manager)"
    elif S.as_int(tree.get("epoch")) is not None:
        p.epochs_completed = S.as_int(tree.get("epoch"))
        p.sources["epochs_completed"] = (f"key 'epoch' = {p.epochs_completed}: 0-based epoch in progress "
                                         "(position inside it not saved)")
    config = S.config_fields(tree.get("config"))
    if isinstance(config, dict) and S.as_int(config.get("max_steps")) is not None:
        p.max_steps = S.as_int(config["max_steps"])
        p.sources["max_steps"] = f"key 'config' field max_steps = {p.max_steps}"
        if p.global_step is not None:
            p.training_finished = p.global_step >= p.max_steps
    return p


def _experiment_record(tree: Tree, epochs: int, step: int) -> CounterValues:
    position = tree.get("data_position")
    if isinstance(position, dict) and S.as_int(position.get("epoch")) is not None:
        per_epoch = S.as_int(position.get("steps_per_epoch"))
        if per_epoch is not None and per_epoch >= 1 and step >= per_epoch:
            # batch_in_epoch counts 0..steps_per_epoch-1 (validate: counters.step-past-epoch-end)
            raise UnrepresentableProgress(f"step {step} is not inside an epoch of steps_per_epoch = {per_epoch} "
                                          "batches; record a finished epoch with --complete instead")
        values: CounterValues = {("data_position", "epoch"): epochs, ("data_position", "batch_in_epoch"): step}
        if "micro_step" in position:     # without grad_accum: start on an optimizer-step boundary
            values[("data_position", "micro_step")] = 0
        if "epoch" in tree:
            values[("epoch",)] = epochs
        values.update(_steps_for_position(tree, position, epochs * (S.as_int(position.get("steps_per_epoch")) or 0) + step))
        return values
    _whole_epochs_only(step, "this layout stores no position inside an epoch (no 'data_position')")
    return {("epoch",): epochs}


def _steps_for_position(tree: Tree, position: dict[str, Any], batches: int) -> CounterValues:
    """ckptkit's trainer: global_step x grad_accum + micro_step = batches consumed. Where the
    position records its accumulation and batches per epoch, the step counters follow it."""
    accum, per_epoch = S.as_int(position.get("grad_accum")), S.as_int(position.get("steps_per_epoch"))
    if not accum or accum < 1 or not per_epoch or per_epoch < 1 or S.as_int(tree.get("global_step")) is None:
        return {}
    values: CounterValues = {("global_step",): batches // accum}
    if "micro_step" in position:
        values[("data_position", "micro_step")] = batches % accum
    return values


def _training_state_progress(tree: Tree, path: Path) -> Progress:
    """Seed 003: epoch is 1-based; step counts batches done in it, and step 0 marks its end."""
    p = Progress()
    epoch, step, total = (S.as_int(tree.get(k)) for k in ("epoch", "step", "total_batches"))
    p.steps_per_epoch = total
    if total is not None:
        p.sources["steps_per_epoch"] = f"key 'total_batches' = {total}"
    if epoch is None:
        p.notes.append("no 'epoch' key: a resume would restart at epoch 0")
        return p
    if not step:
        p.epochs_completed, p.epoch_complete, p.step_in_epoch = epoch, True, 0
        p.sources["epochs_completed"] = f"key 'epoch' = {epoch} with 'step' = 0 (0 marks the end of the epoch)"
        if total is None:
            p.notes.append(f"step=0 without total_batches is ambiguous: it marks the end of epoch {epoch} "
                           f"by this layout's convention, but cannot be told apart from 'epoch {epoch} "
                           "not started'")
    elif total is not None and step >= total:
        p.epochs_completed, p.epoch_complete, p.step_in_epoch = epoch, True, 0
        p.sources["epochs_completed"] = f"key 'step' = {step} >= total_batches = {total}: epoch {epoch} complete"
    else:
        p.epochs_completed, p.epoch_complete, p.step_in_epoch = epoch - 1, False, step
        p.sources["epochs_completed"] = f"key 'epoch' = {epoch} (1-based) with 'step' = {step}: epoch {epoch} in progress"
        p.sources["step_in_epoch"] = f"key 'step' = {step}"
    _ckptkit_counters(tree, p)   # ckptkit's trainer: global_step and data_position agree with epoch/step
    return p


def _training_state_record(tree: Tree, epochs: int, step: int) -> CounterValues:
    total = S.as_int(tree.get("total_batches"))
    if step == 0:
        values: CounterValues = {("epoch",): epochs, ("step",): 0}
    elif total is not None and step >= total:
        raise UnrepresentableProgress(f"step {step} is not inside an epoch of total_batches = {total} "
                                      "batches; record a finished epoch with --complete instead")
    else:
        values = {("epoch",): epochs + 1, ("step",): step}
    if isinstance(tree.get("data_position"), dict):
        # ckptkit's trainer: data_position and global_step move with the seed's counters
        # (its 'epoch' is 1-based inside an epoch, so the experiment layout's 'epoch' is not taken)
        values.update({k: v for k, v in _experiment_record(tree, epochs, step).items() if k != ("epoch",)})
    return values


def _nanogpt_progress(tree: Tree, path: Path) -> Progress:
    p = Progress(global_step=S.as_int(tree.get("iter_num")))
    p.sources["global_step"] = f"key 'iter_num' = {p.global_step}"
    return p


def _lightning_progress(tree: Tree, path: Path) -> Progress:
    p = Progress(global_step=S.as_int(tree.get("global_step")))
    p.sources["global_step"] = f"key 'global_step' = {p.global_step}"
    # `epoch` is the 0-based epoch being run. Whether it is finished shows in the batch loop's
    # is_last_batch: the epoch counters are bumped at different moments for step-triggered and
    # epoch-end saves (checked against real Lightning 2.6 checkpoints), is_last_batch is not.
    epoch = S.as_int(tree.get("epoch"))
    batch = dig(tree, "loops", "fit_loop", "epoch_loop.batch_progress")
    if epoch is not None and isinstance(batch, dict):
        done_in_epoch = S.as_int(dig(batch, "current", "processed")) or 0
        if batch.get("is_last_batch"):
            p.epochs_completed, p.step_in_epoch, p.epoch_complete = epoch + 1, 0, True
        else:
            p.epochs_completed, p.step_in_epoch = epoch, done_in_epoch
            p.epoch_complete = done_in_epoch == 0
        p.sources["epochs_completed"] = (f"key 'epoch' = {epoch} (0-based epoch being run) with "
                                         f"loops.fit_loop batch progress ({done_in_epoch} batches, "
                                         f"is_last_batch={bool(batch.get('is_last_batch'))})")
    elif S.as_int(tree.get("epoch")) is not None:
        p.epochs_completed = S.as_int(tree.get("epoch"))
        p.sources["epochs_completed"] = f"key 'epoch' = {p.epochs_completed} (Lightning's current_epoch)"
    return p


def _lightning_record(tree: Tree, epochs: int, step: int) -> CounterValues:
    batch = dig(tree, "loops", "fit_loop", "epoch_loop.batch_progress")
    if not isinstance(batch, dict) or not isinstance(batch.get("current"), dict):
        _whole_epochs_only(step, "this checkpoint has no loops.fit_loop batch progress")
        return {("epoch",): epochs}
    where = ("loops", "fit_loop", "epoch_loop.batch_progress")
    if step == 0 and epochs > 0:      # as Lightning writes at an epoch's end: last batch of epoch-1
        values: CounterValues = {("epoch",): epochs - 1, where + ("is_last_batch",): True}
    else:
        values = {("epoch",): epochs, where + ("is_last_batch",): False, where + ("current", "processed"): step}
    # Lightning resumes its epoch from the loops' epoch_progress ('epoch' is written from its
    # `completed`); the epoch being run is ready and started, and processed once its batches ran.
    current = dig(tree, "loops", "fit_loop", "epoch_progress", "current")
    if isinstance(current, dict):
        running = values[("epoch",)]
        counts = {"completed": running, "ready": running + 1, "started": running + 1,
                  "processed": running + 1 if step == 0 and epochs > 0 else running}
        for name, value in counts.items():
            if name in current:
                values[("loops", "fit_loop", "epoch_progress", "current", name)] = value
    return values


def _generic_progress(tree: Tree, path: Path) -> Progress:
    p = Progress()
    for key in ("global_step", "iter_num", "iteration", "step"):
        if S.as_int(tree.get(key)) is not None:
            p.global_step = S.as_int(tree[key])
            p.sources["global_step"] = f"key {key!r} = {p.global_step}"
            break
    if S.as_int(tree.get("epoch")) is not None:
        p.epochs_completed = S.as_int(tree["epoch"])
        p.sources["epochs_completed"] = (f"key 'epoch' = {p.epochs_completed} (meaning not known for this "
                                         "layout: taken as epochs completed)")
    return p


def _generic_record(tree: Tree, epochs: int, step: int) -> CounterValues:
    _whole_epochs_only(step, "this layout's 'epoch' is read as epochs completed and no position inside "
                             "an epoch is stored")
    return {("epoch",): epochs}


def _whole_epochs_only(step: int, why: str) -> None:
    if step:
        raise UnrepresentableProgress(f"cannot record a position inside an epoch: {why}; use --complete")


def dig(tree: Any, *keys: str) -> Any:
    """``tree[k1][k2]...``, or None where a level is missing or not a dict."""
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _ckptkit_layout(tree: Tree) -> Any:
    """The layout ckptkit's checkpoint manager names in its marker (absent for seed 004's)."""
    marker = tree.get("ckptkit")
    return marker.get("layout") if isinstance(marker, dict) else None


def _has(*keys: str) -> Callable[[Tree], bool]:
    return lambda t: all(k in t for k in keys)


def _any(*keys: str) -> Callable[[Tree], bool]:
    return lambda t: any(k in t for k in keys)


_RECSYS_KEYS = {"model_state_dict", "optimizer_state_dict", "epoch"}

FAMILIES: list[Family] = [
    Family("lightning", "PyTorch Lightning .ckpt",
           lambda t: "pytorch-lightning_version" in t or _has("state_dict", "optimizer_states", "loops")(t),
           _lightning_progress, _lightning_record, (("global_step", "global_step"),)),
    Family("nanogpt", "nanoGPT-style dict (model, optimizer, model_args, iter_num)",
           _has("model_args", "iter_num"), _nanogpt_progress, None, (("global_step", "iter_num"),)),
    Family("experiment", "experiment .pt (global_step, epoch, best_val_loss, config, histories)",
           lambda t: "global_step" in t and _any("best_val_loss", "train_history", "val_history")(t),
           _experiment_progress, _experiment_record, (("global_step", "global_step"),)),
    Family("retrieval", "retrieval .pt (epoch stored as epoch+1, loss, recall_at_10, histories)",
           _any("recall_at_10", "val_recalls", "train_losses"), _retrieval_progress, _retrieval_record),
    Family("training-state", "training_state.pth (epoch, step with 0 = end of epoch, total_batches)",
           lambda t: "total_batches" in t or (_has("epoch", "step")(t) and _any("best_val_f1", "best_val_acc")(t)),
           _training_state_progress, _training_state_record, (("steps_per_epoch", "total_batches"),)),
    Family("recsys", "recsys .pth (model_state_dict, optimizer_state_dict, epoch)",
           lambda t: "model_state_dict" in t and (set(t) <= _RECSYS_KEYS or _ckptkit_layout(t) == "recsys"),
           _recsys_progress, _recsys_record),
]
GENERIC = Family("generic", "dict with a model and training state", lambda t: True, _generic_progress,
                 _generic_record, (("global_step", "global_step"),))


def recognise(tree: Any) -> Family | None:
    """The family of a decoded tree, or None for a bare state dict / non-dict."""
    if not isinstance(tree, dict) or all(isinstance(k, str) is False for k in tree):
        return None
    for family in FAMILIES:
        if family.matches(tree):
            return family
    return GENERIC


def build_checkpoint(path: Path, fmt: str, tree: Any, globals_: list[GlobalRef]) -> Checkpoint:
    """A Checkpoint for a single-file format's decoded tree: family, sections, progress, findings."""
    ckpt = Checkpoint(path=path, format=fmt, family="unknown", size_bytes=path.stat().st_size,
                      tree=tree, files=[path])
    ckpt.findings.extend(security_findings(path, path.name, globals_))
    bare = S.flatten_state_dict(tree, strict=True)
    if bare is not None:
        ckpt.family, ckpt.model = "state-dict", bare
        ckpt.sources["model"] = "(top level)"
        return ckpt
    if S.is_optimizer_state(tree):
        ckpt.family, ckpt.optimizer = "optimizer-state", tree
        ckpt.sources["optimizer"] = "(top level)"
        return ckpt
    family = recognise(tree)
    if family is None:
        ckpt.family = "pickled-object" if isinstance(tree, PickledObject) else "unknown"
        if isinstance(tree, PickledObject):
            ckpt.config = S.config_fields(tree)
        return ckpt
    ckpt.family = family.name
    _fill_sections(ckpt, tree)
    ckpt.progress = family.progress(tree, path)
    return ckpt


def _fill_sections(ckpt: Checkpoint, tree: Tree) -> None:
    used: set[str] = set()
    for key in S.MODEL_KEYS:
        model = S.flatten_state_dict(tree.get(key))
        if model is not None:
            ckpt.model, ckpt.sources["model"] = model, key
            used.add(key)
            break
    for attr, keys in (("optimizer", S.OPTIMIZER_KEYS), ("scheduler", S.SCHEDULER_KEYS),
                       ("scaler", S.SCALER_KEYS), ("rng", S.RNG_KEYS)):
        key, value = S.first_present(tree, keys)
        if key is not None and key not in used:
            setattr(ckpt, attr, S.unwrap_single(value))
            ckpt.sources[attr] = key
            used.add(key)
    key, value = S.first_present(tree, S.CONFIG_KEYS)
    if key is not None and key not in used:
        ckpt.config, ckpt.sources["config"] = S.config_fields(value), key
        used.add(key)
    for key, value in tree.items():
        if key in used or key in S.COUNTER_KEYS or key == "data_position":
            continue
        if S.is_number(value):
            ckpt.metrics[key] = value
        elif S.is_history(value):
            ckpt.histories[key] = value
        else:
            ckpt.extra[key] = value


RETRIEVAL_NAME = re.compile(r"epoch_(?P<epoch>\d+)_recall_(?P<recall>\d+(?:\.\d+)?)")


def family_named(name: str) -> Family | None:
    """The family called `name` (as stored in `Checkpoint.family`), or None."""
    return next((f for f in [*FAMILIES, GENERIC] if f.name == name), None)
