"""Positions inside their ranges: is each stored batch index one its layout can hold?

A batch index outside its epoch, or an accumulation counter outside its window, names no place
in the data: a resume from it skips or repeats batches (or never closes a window), whatever the
other counters say. These are errors, and `verify_for_resume` refuses them like `validate` does.

- ckptkit's trainer (`data_position`, see `ckptkit.training.sampler`): `0 <= batch_in_epoch <
  steps_per_epoch` (an epoch's end is recorded as `(epoch + 1, 0)`, never as `steps_per_epoch`),
  `0 <= micro_step < grad_accum`, `epoch >= 0`, and at least one batch per epoch and per window.
- EnStack (`training_state.pth`): `step` counts batches done in the 1-based `epoch`, `0 <= step
  <= total_batches` (0 and total_batches both mark its end; above it is
  `counters.step-past-epoch-end`, raised with that layout's other counter findings).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ckptkit.core.checkpoint import Finding, Severity
from ckptkit.families.base import position_args
from ckptkit.views import sections as S

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext

OUT_OF_RANGE = "counters.position-out-of-range"
PAST_END = "counters.step-past-epoch-end"
POSITION = "data_position"


def check_position_range(ctx: ValidationContext) -> Iterable[Finding]:
    tree = ctx.ckpt.tree
    position = tree.get(POSITION) if isinstance(tree, dict) else None
    if isinstance(position, dict):
        yield from _data_position(ctx, position, S.as_int(tree.get("global_step")))


def place(epochs: int, within: int) -> str:
    """A position in words, as fix-epoch's arguments name it."""
    return f"{epochs} epochs complete" if within == 0 else f"epoch {epochs + 1}, step {within} of it"


def position_in_range(position: dict[str, Any]) -> bool:
    """Whether a `data_position`'s counters (those present) lie inside their ranges."""
    epoch, batch, per_epoch, micro, accum = _counters(position)
    return not any(_problems(epoch, batch, per_epoch, micro, accum))


def _counters(position: dict[str, Any]) -> tuple[int | None, ...]:
    return tuple(S.as_int(position.get(k)) for k in
                 ("epoch", "batch_in_epoch", "steps_per_epoch", "micro_step", "grad_accum"))


def _problems(epoch: int | None, batch: int | None, per_epoch: int | None, micro: int | None,
              accum: int | None) -> list[tuple[str, str, str]]:
    """(code, key, what is wrong and what a resume would do) for each counter outside its range."""
    out: list[tuple[str, str, str]] = []
    if per_epoch is not None and per_epoch < 1:
        out.append((OUT_OF_RANGE, "steps_per_epoch", f"expected steps_per_epoch >= 1, found {per_epoch}: an "
                    "epoch has at least one batch, so no batch of the data can be placed in it"))
    if epoch is not None and epoch < 0:
        out.append((OUT_OF_RANGE, "epoch", f"expected epoch >= 0 (epochs completed), found {epoch}: it names no "
                    "epoch of the data, so a resume cannot tell which batches were trained on"))
    if batch is not None and batch < 0:
        out.append((OUT_OF_RANGE, "batch_in_epoch", f"expected 0 <= batch_in_epoch < steps_per_epoch = "
                    f"{per_epoch}, found batch_in_epoch = {batch}: a batch count cannot be negative; the "
                    "sampler would index outside the epoch's permutation"))
    elif batch is not None and per_epoch is not None and 1 <= per_epoch <= batch:
        out.append((PAST_END, "batch_in_epoch", _past_end(epoch, batch, per_epoch)))
    if accum is not None and accum < 1:
        out.append((OUT_OF_RANGE, "grad_accum", f"expected grad_accum >= 1, found {accum}: an optimizer step "
                    "takes at least one batch"))
    elif micro is not None and (micro < 0 or (accum is not None and micro >= accum)):
        out.append((OUT_OF_RANGE, "micro_step", f"expected 0 <= micro_step < grad_accum = {accum}, found "
                    f"micro_step = {micro}: the trainer steps the optimizer when micro_step + 1 reaches "
                    "grad_accum, so a resume from here would step it after the wrong number of batches and "
                    "global_step would no longer count the data consumed"))
    return out


def _past_end(epoch: int | None, batch: int, per_epoch: int) -> str:
    said = (f"expected batch_in_epoch < steps_per_epoch = {per_epoch}, found batch_in_epoch = {batch} in "
            f"epoch = {epoch}: the trainer records an epoch's end as (epoch + 1, batch_in_epoch 0), never "
            "as steps_per_epoch")
    if batch == per_epoch:
        return (f"{said}; this reads as an unfinished epoch with all its batches done, so the epoch counter "
                "is one behind the data (or the epoch's last batch was counted twice)")
    return (f"{said}; the sampler would start the next epoch at its first batch, repeating the "
            f"{batch - per_epoch} batches of it this position counts as consumed")


def _data_position(ctx: ValidationContext, position: dict[str, Any], step: int | None) -> Iterable[Finding]:
    epoch, batch, per_epoch, micro, accum = _counters(position)
    problems = _problems(epoch, batch, per_epoch, micro, accum)
    target = _target(epoch, batch, per_epoch, micro, accum, step) if problems else None
    if target is None:
        fix, then = None, "No position can be derived from the other counters: resume from another checkpoint"
    else:
        (epochs, within), basis = target
        fix = ctx.command("fix-epoch", *position_args(epochs, within))
        then = f"The fix command records {place(epochs, within)}, from {basis}"
    for code, key, what in problems:
        yield Finding(code, Severity.ERROR, ctx.where(f"{POSITION}.{key}"),
                      f"{what}. {then}", fix)


def _target(epoch: int | None, batch: int | None, per_epoch: int | None, micro: int | None,
            accum: int | None, step: int | None) -> tuple[tuple[int, int], str] | None:
    """The position the in-range counters give, as (epochs done, batches into the next), and
    where it comes from: global_step's batches where it and the accumulation are known (fix-epoch
    then rewrites micro_step and global_step from it), else the stored batches carried over the
    epoch's end."""
    if per_epoch is None or per_epoch < 1:
        return None
    if step is not None and step >= 0 and accum is not None and accum >= 1:
        window = micro if micro is not None and 0 <= micro < accum else 0
        batches = step * accum + window
        return divmod(batches, per_epoch), (f"global_step = {step} x grad_accum = {accum}"
                                            f"{f' + micro_step = {window}' if window else ''} = {batches} batches")
    if epoch is not None and epoch >= 0 and batch is not None and batch >= 0:
        batches = epoch * per_epoch + batch
        return divmod(batches, per_epoch), (f"epoch = {epoch} x steps_per_epoch = {per_epoch} + batch_in_epoch "
                                            f"= {batch} = {batches} batches")
    return None
