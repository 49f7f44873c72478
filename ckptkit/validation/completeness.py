"""Completeness: are the parts a resume needs present?"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ckptkit.core.checkpoint import Finding, Severity
from ckptkit.families import family_named, system_folder
from ckptkit.validation.counters import is_training_layout
from ckptkit.views import sections as S

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext

# Files `save_pretrained` writes beside EnStack's training_state.pth.
PRETRAINED_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                      "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")


def check_completeness(ctx: ValidationContext) -> Iterable[Finding]:
    ckpt = ctx.ckpt
    if not is_training_layout(ckpt.family) or (ckpt.path.is_dir() and not system_folder(ckpt)):
        return      # a folder is checked here when a member holds a family's counters (EnStack's)
    has_counters = ckpt.progress.known
    has_optimizer = S.is_optimizer_state(ckpt.optimizer)     # an empty {} placeholder is not one
    if not ckpt.model:
        yield from _model_elsewhere(ctx, has_optimizer)
    if not has_optimizer and ckpt.model:
        refused = ckpt.progress.resume is not None and ckpt.progress.resume.refuses is not None
        if ckpt.progress.training_finished:
            yield Finding("completeness.weights-only", Severity.INFO, ctx.where(),
                          f"training finished ({ckpt.progress.describe()}) and only the model was kept, no optimizer "
                          "state: fine for inference or fine-tuning; training it further starts a fresh optimizer")
        elif has_counters:
            then = (ckpt.progress.resume.describe() if refused and ckpt.progress.resume
                    else "a resume would restart Adam moments / momentum from zero")
            yield Finding("completeness.missing-optimizer", Severity.WARNING, ctx.where(),
                          f"expected optimizer state beside the counters ({ckpt.progress.describe()}), found "
                          f"none: {then}")
        else:
            yield Finding("completeness.weights-only", Severity.INFO, ctx.where(),
                          "holds model weights only (no optimizer, no epoch/step counters): fine for "
                          "inference or fine-tuning; resuming training from it would restart at epoch 0 "
                          "with a fresh optimizer")
    family = family_named(ckpt.family)
    if has_optimizer and ckpt.scheduler is None and not (family is not None and family.schedule_from_epoch):
        yield Finding("completeness.missing-scheduler", Severity.INFO, ctx.where(),
                      "no scheduler state saved: if the run used a learning-rate scheduler, a resume "
                      "restarts its schedule (warmup, decay) from the beginning")


def _model_elsewhere(ctx: ValidationContext, has_optimizer: bool) -> Iterable[Finding]:
    """A training_state.pth keeps weights in save_pretrained files beside it."""
    if ctx.ckpt.path.is_dir():
        return      # a folder's missing weights are its reader's folder.missing-weights
    folder = ctx.ckpt.path.parent
    family = family_named(ctx.ckpt.family)
    if family is not None and family.names.state_file is not None:     # EnStack's training_state.pth
        if not any((folder / name).exists() for name in PRETRAINED_WEIGHTS):
            yield Finding("completeness.missing-weights", Severity.ERROR, ctx.where(),
                          f"expected model weights saved with save_pretrained beside this file "
                          f"({' or '.join(PRETRAINED_WEIGHTS[:2])} in {folder.name}/), found none: the "
                          "save was interrupted before the model was written")
        return
    if has_optimizer:
        yield Finding("completeness.missing-model", Severity.ERROR, ctx.where(),
                      "expected model weights (e.g. 'model_state_dict') beside the optimizer state, "
                      "found none: this checkpoint cannot restore a model")
