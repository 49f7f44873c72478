"""ckptkit's own counters, added by its checkpoint manager to whatever layout a bundled trainer
writes: ``global_step`` and ``data_position`` (epoch, batch_in_epoch, steps_per_epoch,
micro_step, grad_accum). A checkpoint taken inside an epoch (an interrupt) says where in it,
which a system's own ``epoch`` alone cannot.
"""
from __future__ import annotations

from typing import Any

from ckptkit.core.checkpoint import Progress
from ckptkit.families.base import CounterValues, Tree, UnrepresentableProgress, whole_epochs_only
from ckptkit.views import sections as S

POSITION = "data_position"
POSITION_KEYS = ((POSITION, "epoch"), (POSITION, "batch_in_epoch"), (POSITION, "steps_per_epoch"),
                 (POSITION, "micro_step"), (POSITION, "grad_accum"))


def has_position(tree: Tree) -> bool:
    position = tree.get(POSITION)
    return isinstance(position, dict) and S.as_int(position.get("epoch")) is not None


def read_position(tree: Tree, p: Progress) -> None:
    """global_step and the place inside the epoch, where ckptkit's manager wrote them."""
    p.global_step = S.as_int(tree.get("global_step"))
    if p.global_step is not None:
        p.sources["global_step"] = f"key 'global_step' = {p.global_step}"
    position = tree.get(POSITION)
    if not isinstance(position, dict) or S.as_int(position.get("batch_in_epoch")) is None:
        return
    p.step_in_epoch = S.as_int(position.get("batch_in_epoch"))
    p.steps_per_epoch = S.as_int(position.get("steps_per_epoch"))
    p.epoch_complete = p.step_in_epoch == 0
    p.sources["step_in_epoch"] = "key 'data_position' (written by ckptkit's checkpoint manager)"


def record_position(tree: Tree, epochs: int, step: int) -> CounterValues:
    """The data_position (and the step counters that follow it) for `epochs` done + `step` batches."""
    position = tree.get(POSITION)
    if not has_position(tree):
        whole_epochs_only(step, "this layout stores no position inside an epoch (no 'data_position')")
        return {}
    assert isinstance(position, dict)
    per_epoch = S.as_int(position.get("steps_per_epoch"))
    if per_epoch is not None and per_epoch >= 1 and step >= per_epoch:
        # batch_in_epoch counts 0..steps_per_epoch-1 (validate: counters.step-past-epoch-end)
        raise UnrepresentableProgress(f"step {step} is not inside an epoch of steps_per_epoch = {per_epoch} "
                                      "batches; record a finished epoch with --complete instead")
    values: CounterValues = {(POSITION, "epoch"): epochs, (POSITION, "batch_in_epoch"): step}
    if "micro_step" in position:     # without grad_accum: start on an optimizer-step boundary
        values[(POSITION, "micro_step")] = 0
    values.update(_steps_for_position(tree, position, epochs * (per_epoch or 0) + step))
    return values


def _steps_for_position(tree: Tree, position: dict[str, Any], batches: int) -> CounterValues:
    """global_step x grad_accum + micro_step = batches consumed. Where the position records its
    accumulation and batches per epoch, the step counters follow it."""
    accum, per_epoch = S.as_int(position.get("grad_accum")), S.as_int(position.get("steps_per_epoch"))
    if not accum or accum < 1 or not per_epoch or per_epoch < 1 or S.as_int(tree.get("global_step")) is None:
        return {}
    values: CounterValues = {("global_step",): batches // accum}
    if "micro_step" in position:
        values[(POSITION, "micro_step")] = batches % accum
    return values


def steps_left_as_is(tree: Tree) -> list[str]:
    """What fix-epoch did not change among the step counters of a run_experiment.py LM or
    ckptkit-trainer checkpoint, and why."""
    step = S.as_int(tree.get("global_step"))
    position = tree.get("data_position")
    accum = S.as_int(position.get("grad_accum")) if isinstance(position, dict) else None
    if step is None:
        return []
    if not accum or not isinstance(position, dict):
        return [f"global_step = {step} was left as is: it counts optimizer steps and is what this layout's "
                "trainer resumes from; the epoch alone does not determine it"]
    out: list[str] = []      # global_step itself follows the position (_steps_for_position)
    micro = S.as_int(position.get("micro_step")) or 0
    if micro:
        those = "that batch" if micro == 1 else "those batches"
        out.append(f"the position is {micro} batch{'' if micro == 1 else 'es'} into a gradient-accumulation window "
                   f"of {accum}: the gradients of {those} are not in the checkpoint, so the resumed window starts "
                   "from zero gradients")
    if "accumulation" in tree:
        out.append("the saved 'accumulation' gradients belong to the old position and were left as is; "
                   "delete them (or resume from a checkpoint saved on a window boundary) for a clean window")
    return out
