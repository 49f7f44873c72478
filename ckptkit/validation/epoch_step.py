"""Epoch against step counters: do a checkpoint's epoch and its step counts name one position?

Each family counts differently, so each is checked in its own convention, and a finding is
raised only when the two counters cannot both be true; where the checkpoint does not record
enough to tell (steps per epoch, gradient accumulation), nothing is said:

- HF Trainer (HF Trainer LoRA ranker): the float `epoch` counts data-loader batches, `global_step` counts
  optimizer updates. Under gradient accumulation they differ by less than one update's share of
  an epoch (1 / updates per epoch), never more, whatever the accumulation; updates per epoch must
  be known for certain (training_args.bin says max_steps was derived from whole epochs, or an
  unrounded log entry sits on an epoch boundary). Every `log_history` entry is such a pair too.
- ckptkit's trainer (`data_position`): batches consumed = epoch x steps_per_epoch + batch_in_epoch
  = global_step x grad_accum + micro_step, and the top-level `epoch` repeats data_position's.
- Lightning: checked by its family (``ckptkit.families.lightning``, the same finding code).
- EnStack (`epoch` 1-based, `step` 0 = end of epoch, `total_batches`): its only step counter is
  the optimizer's own; each optimizer step takes at least one batch, whatever the accumulation.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ckptkit.core.checkpoint import Finding, Severity
from ckptkit.families import Family, UnrepresentableProgress, counters_tree, family_named
from ckptkit.families.base import position_args
from ckptkit.validation.position_range import place, position_in_range
from ckptkit.views import sections as S

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext

CODE = "counters.epoch-step-mismatch"
TRAINER_STATE = "trainer_state.json"
HF_STATE_SLACK = 1e-6      # trainer_state.json keeps the float epoch unrounded
HF_LOG_SLACK = 0.01        # log_history epochs were rounded to 2 decimals by older transformers


def check_epoch_step(ctx: ValidationContext) -> Iterable[Finding]:
    yield from _hf_trainer(ctx)
    yield from _data_position(ctx)
    yield from _training_state(ctx)


# --- Hugging Face Trainer ------------------------------------------------------------------

def _hf_trainer(ctx: ValidationContext) -> Iterable[Finding]:
    tree = ctx.ckpt.tree
    state = tree.get(TRAINER_STATE) if ctx.ckpt.path.is_dir() and isinstance(tree, dict) else None
    if not isinstance(state, dict):
        return
    args = ctx.ckpt.config if ctx.ckpt.sources.get("config") == "training_args.bin" else None
    per_epoch, why = hf_updates_per_epoch(state, args if isinstance(args, dict) else None)
    if per_epoch is None:
        return
    step, epoch = S.as_int(state.get("global_step")), state.get("epoch")
    if step is not None and S.is_number(epoch) and _hf_apart(float(epoch), step, per_epoch, HF_STATE_SLACK):
        epochs, within = divmod(step, per_epoch)
        yield Finding(CODE, Severity.WARNING, ctx.where("epoch", TRAINER_STATE),
                      f"epoch = {float(epoch):.6g} counts data-loader batches ({float(epoch):.4g} epochs' "
                      f"worth) but global_step = {step} optimizer updates at {per_epoch} per epoch ({why}) is "
                      f"epoch {step / per_epoch:.4g} ({place(epochs, within)}): under gradient accumulation "
                      f"they differ by less than 1/{per_epoch} of an epoch, "
                      f"here by {abs(float(epoch) - step / per_epoch):.4g}, "
                      "so they cannot both be true. The Trainer resumes from global_step; if global_step is "
                      "right, record it with the fix command",
                      ctx.command("fix-epoch", *position_args(epochs, within)))
    yield from _hf_log_history(ctx, state, per_epoch, why)


def _hf_log_history(ctx: ValidationContext, state: dict[str, Any], per_epoch: int, why: str) -> Iterable[Finding]:
    history = state.get("log_history")
    entries = [(i, S.as_int(e.get("step")), e.get("epoch")) for i, e in enumerate(history or [])
               if isinstance(e, dict)] if isinstance(history, list) else []
    bad = [(i, s, float(ep)) for i, s, ep in entries
           if s is not None and S.is_number(ep) and _hf_apart(float(ep), s, per_epoch, HF_LOG_SLACK)]
    if not bad:
        return
    i, step, epoch = bad[0]
    others = f" ({len(bad) - 1} more entries disagree likewise)" if len(bad) > 1 else ""
    yield Finding(CODE, Severity.WARNING, ctx.where(f"log_history[{i}]", TRAINER_STATE),
                  f"log_history entry {i} has epoch = {epoch:.6g} but step = {step}, which at {per_epoch} "
                  f"optimizer updates per epoch ({why}) is epoch {step / per_epoch:.4g}: they differ by more "
                  f"than 1/{per_epoch} of an epoch, so the entry cannot be from this run's counting{others}; "
                  "logs from a run with another batch size or data set were merged into this state")


def _hf_apart(epoch: float, step: int, per_epoch: int, slack: float) -> bool:
    # Batches lead updates inside an epoch by less than one update's share (ceil(batches /
    # accumulation) updates); older transformers dropped the partial window, lagging as much.
    return abs(epoch - step / per_epoch) >= 1.0 / per_epoch + slack


def hf_updates_per_epoch(state: dict[str, Any], args: dict[str, Any] | None) -> tuple[int | None, str]:
    """Optimizer updates per epoch, only where certain: (None, "") when it cannot be told."""
    max_steps, epochs = S.as_int(state.get("max_steps")), S.as_int(state.get("num_train_epochs"))
    user_max = S.as_int(args.get("max_steps")) if args else None
    user_epochs = args.get("num_train_epochs") if args else None
    # The Trainer sets max_steps = epochs x updates per epoch when the user gave no max_steps.
    if (args is not None and user_max is not None and user_max <= 0 and max_steps and epochs
            and S.is_number(user_epochs) and float(user_epochs) == epochs and max_steps % epochs == 0):
        return max_steps // epochs, f"max_steps {max_steps} / num_train_epochs {epochs}"
    logged = [(S.as_int(e.get("step")), float(e["epoch"])) for e in state.get("log_history") or []
              if isinstance(e, dict) and S.is_number(e.get("epoch"))]
    unrounded = any(round(ep, 2) != ep for _, ep in logged)
    for step, ep in logged:
        if unrounded and step and ep >= 1 and ep.is_integer() and step % int(ep) == 0:
            return step // int(ep), f"log_history: step {step} logged at epoch {int(ep)}"
    return None, ""


# --- ckptkit's own trainer: data_position ----------------------------------------------------

def _data_position(ctx: ValidationContext) -> Iterable[Finding]:
    """ckptkit's trainers write the system's own 'epoch' beside data_position from one counter:
    the family says which 'epoch' that position stores, and the two must agree."""
    found, family = counters_tree(ctx.ckpt), family_named(ctx.ckpt.family)
    if found is None or family is None:
        return
    member, tree = found
    position = tree.get("data_position")
    if not isinstance(position, dict):
        return
    epoch, batch = S.as_int(position.get("epoch")), S.as_int(position.get("batch_in_epoch")) or 0
    top = S.as_int(tree.get("epoch"))
    expected = _stored_epoch(family, tree, epoch, batch)
    if expected is not None and top is not None and top != expected:
        yield Finding(CODE, Severity.WARNING, ctx.where("epoch", member),
                      f"'epoch' = {top} but data_position says {place(epoch, batch)}, which this layout "  # type: ignore[arg-type]
                      f"stores as 'epoch' = {expected}: the trainer writes both from one counter, so they "
                      f"cannot both be true; ckptkit resumes from data_position, the system's own resume "
                      "reads 'epoch'", ctx.command("fix-epoch", *position_args(epoch, batch)))  # type: ignore[arg-type]
    yield from _batches_against_updates(ctx, position, S.as_int(tree.get("global_step")))


def _stored_epoch(family: Family, tree: dict[str, Any], epoch: int | None, batch: int) -> int | None:
    """The 'epoch' the family's own convention stores for data_position's place (None: unknown)."""
    if epoch is None or family.record is None or epoch < 0 or batch < 0:
        return None
    try:
        value = family.record(tree, epoch, batch).get(("epoch",))
    except UnrepresentableProgress:
        return None
    return S.as_int(value)


def _batches_against_updates(ctx: ValidationContext, position: dict[str, Any], step: int | None) -> Iterable[Finding]:
    names = ("epoch", "batch_in_epoch", "steps_per_epoch", "micro_step", "grad_accum")
    epoch, batch, per_epoch, micro, accum = (S.as_int(position.get(k)) for k in names)
    if (epoch is None or batch is None or per_epoch is None or micro is None or accum is None or step is None
            or not position_in_range(position)):
        return      # counters.position-out-of-range / step-past-epoch-end name the impossible counter
    consumed, implied = epoch * per_epoch + batch, step * accum + micro
    if consumed == implied:
        return
    epochs, within = divmod(implied, per_epoch)
    yield Finding(CODE, Severity.WARNING, ctx.where("data_position"),
                  f"data_position says {consumed} batches consumed (epoch = {epoch} x steps_per_epoch = "
                  f"{per_epoch} + batch_in_epoch = {batch}) but global_step = {step} optimizer steps x "
                  f"grad_accum = {accum} + micro_step = {micro} is {implied} batches ({place(epochs, within)}): "
                  "they cannot both be true for one run on one data set; a resume would draw the data of "
                  f"batch {consumed} while the schedule and step budget continue from step {step}. If "
                  "global_step is right, record its position with the fix command",
                  ctx.command("fix-epoch", *position_args(epochs, within)))


# --- EnStack: training_state.pth ------------------------------------------------------------

def _training_state(ctx: ValidationContext) -> Iterable[Finding]:
    """The optimizer cannot have stepped more often than batches were trained, by the family's
    own reading of its position (EnStack: 1-based epoch, step 0 = its end), file or folder alike."""
    found, p = counters_tree(ctx.ckpt), ctx.ckpt.progress
    if found is None or "data_position" in found[1]:
        return      # ckptkit's trainers: data_position against global_step is checked above
    member, tree = found
    total, updates = p.steps_per_epoch, ctx.read_optimizer_step(tree.get("optimizer_state_dict"))
    if None in (p.epochs_completed, total, updates) or total <= 0:   # type: ignore[operator]
        return
    done = p.epochs_completed * total + (p.step_in_epoch or 0)   # type: ignore[operator]
    if updates <= done:   # type: ignore[operator]
        return
    epochs, within = divmod(updates, total)   # type: ignore[operator]
    yield Finding(CODE, Severity.WARNING, ctx.where("step", member),
                  f"{', '.join(f'{k!r} = {v}' for k, v in p.stored.items())} ({p.describe()}) is {done} batches "
                  "into training, "
                  f"but the optimizer has taken {updates} steps: each step takes at least one batch, so they "
                  "cannot both be true (unless this run started from another run's optimizer state or "
                  "total_batches changed between runs). With no gradient accumulation the optimizer's steps put "
                  f"the run at {place(epochs, within)}; if so, record it with the fix command",
                  ctx.command("fix-epoch", *position_args(epochs, within)))
