"""run_experiment.py LM (``checkpoint_step_{N}.pt``, ``best_model.pt``, ``final_model.pt``):
Open-Superintelligence-Lab/blueberry-llm, ``experiments/exp6_gated_deltanet_training/
run_experiment.py`` at 227d53a.

- Counts ``global_step`` (optimizer steps) up to ``config.max_steps``; ``epoch`` is incremented
  after each pass of the loader loop, also when it exits by ``break`` at ``max_steps``.
- ``--resume`` restores ``global_step`` and ``epoch`` but not the data position: the data
  restarts at a new shuffled pass. At ``max_steps`` a resume without ``--extend-steps`` re-saves
  immediately; ``--extend-steps N`` sets a new absolute total.
- ``config`` is a pickled ``ExperimentConfig``.
"""
from __future__ import annotations

from pathlib import Path

from ckptkit.core.checkpoint import Progress, ResumePrediction
from ckptkit.families.base import CounterValues, Family, FamilyNames, Tree, has_any, whole_epochs_only
from ckptkit.families.ckptkit_position import POSITION_KEYS, has_position, record_position, steps_left_as_is
from ckptkit.views import sections as S

SYSTEM = "run_experiment.py LM"
HOW = "--resume"


def matches(tree: Tree) -> bool:
    return "global_step" in tree and has_any("best_val_loss", "train_history", "val_history")(tree)


def progress(tree: Tree, path: Path) -> Progress:
    p = Progress()
    p.global_step = S.as_int(tree.get("global_step"))
    if p.global_step is not None:
        p.sources["global_step"] = f"key 'global_step' = {p.global_step}"
    position = tree.get("data_position")
    if has_position(tree):
        assert isinstance(position, dict)
        p.epochs_completed = S.as_int(position.get("epoch"))
        p.step_in_epoch = S.as_int(position.get("batch_in_epoch")) or 0
        p.steps_per_epoch = S.as_int(position.get("steps_per_epoch"))
        p.epoch_complete = p.step_in_epoch == 0
        p.sources["epochs_completed"] = "key 'data_position' (written by ckptkit's checkpoint manager)"
    elif S.as_int(tree.get("epoch")) is not None:
        p.epochs_completed = S.as_int(tree.get("epoch"))
        p.sources["epochs_completed"] = (f"key 'epoch' = {p.epochs_completed}: passes over the data started "
                                         "(position inside the pass not saved)")
    config = S.config_fields(tree.get("config"))
    if isinstance(config, dict) and S.as_int(config.get("max_steps")) is not None:
        p.max_steps = S.as_int(config["max_steps"])
        p.sources["max_steps"] = f"key 'config' field max_steps = {p.max_steps}"
        if p.global_step is not None:
            p.training_finished = p.global_step >= config["max_steps"]
    return p


def record(tree: Tree, epochs: int, step: int) -> CounterValues:
    if has_position(tree):
        values = record_position(tree, epochs, step)
        if "epoch" in tree:
            values[("epoch",)] = epochs
        return values
    whole_epochs_only(step, "this layout stores no position inside an epoch (no 'data_position')")
    return {("epoch",): epochs}


def resume(tree: Tree, path: Path, p: Progress) -> ResumePrediction:
    loses = ["the data position: the data restarts at a new shuffled pass"]
    if p.training_finished:
        loses.insert(0, f"global step {p.global_step} is already at max_steps = {p.max_steps}: it re-saves and "
                        "stops at once; pass --extend-steps N (a new absolute total) to train further")
    restores: list[str] = [k for k in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict") if k in tree]
    return ResumePrediction(SYSTEM, HOW, global_step=p.global_step, restores=[*restores, "global_step", "epoch"],
                            loses=loses)


EXPERIMENT = Family(
    "experiment", "run_experiment.py LM .pt (global_step, epoch, best_val_loss, config, histories)",
    matches, progress, record, (("global_step", "global_step"),),
    names=FamilyNames(best=("best_model.pt",), final=("final_model.pt",)),
    resume=resume, counter_keys=(("global_step",), ("epoch",), *POSITION_KEYS), left_as_is=steps_left_as_is,
)
