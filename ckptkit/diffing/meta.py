"""Diffing progress and metadata: counters, learning rates, metrics, config, histories, other keys."""
from __future__ import annotations

from ckptkit.core.checkpoint import Checkpoint, Progress
from ckptkit.diffing.report import Change
from ckptkit.diffing.state import learning_rates
from ckptkit.diffing.trees import DiffContext, diff_dicts, diff_tree, sequence_divergence, values_equal

# The Progress fields that are values; sources and notes are explanations, not state.
PROGRESS_FIELDS = ("epochs_completed", "step_in_epoch", "steps_per_epoch", "global_step", "epoch_complete",
                   "epoch_float", "max_steps", "training_finished")


def diff_meta(ctx: DiffContext, a: Checkpoint, b: Checkpoint) -> None:
    _diff_progress(ctx, a.progress, b.progress)
    lr_a, lr_b = learning_rates(a.optimizer), learning_rates(b.optimizer)
    if not values_equal(lr_a, lr_b):
        several = lr_a is not None and lr_b is not None and max(len(lr_a), len(lr_b)) > 1
        note = sequence_divergence(lr_a, lr_b) if several else ""
        ctx.changes.append(Change("meta", "learning_rates", "changed", lr_a, lr_b, note))
    diff_dicts(ctx, "meta", "metrics", a.metrics, b.metrics)
    if a.config is not None or b.config is not None:
        diff_tree(ctx, "meta", "config", a.config, b.config)
    diff_dicts(ctx, "meta", "histories", a.histories, b.histories)
    diff_dicts(ctx, "meta", "extra", a.extra, b.extra)


def _diff_progress(ctx: DiffContext, a: Progress, b: Progress) -> None:
    for name in PROGRESS_FIELDS:
        va, vb = getattr(a, name), getattr(b, name)
        if not values_equal(va, vb):
            ctx.changes.append(Change("meta", f"progress.{name}", "changed", va, vb))
