"""Hugging Face Trainer `checkpoint-{step}/` folders (HF Trainer LoRA ranker).

A folder checkpoint's `tree` holds one entry per member file (decoded json, decoded pickles,
safetensors headers). The Trainer resumes from `trainer_state.json`; without it, or with a
`global_step` that disagrees with the folder name, a resume restarts or double-counts steps.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ckptkit.core.checkpoint import Finding, Severity
from ckptkit.validation.optimizer import against_model
from ckptkit.views import sections as S

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext

FOLDER_STEP = re.compile(r"^checkpoint-(?P<step>\d+)$")
TRAINER_STATE = "trainer_state.json"
ADAPTER_CONFIG = "adapter_config.json"
OPTIMIZER_MEMBERS = ("optimizer.pt", "optimizer.bin")


def check_hf_folder(ctx: ValidationContext) -> Iterable[Finding]:
    ckpt = ctx.ckpt
    if not (ckpt.path.is_dir() and isinstance(ckpt.tree, dict)):
        return
    named = FOLDER_STEP.match(ckpt.path.name)
    if not (named or ckpt.format == "hf-trainer" or TRAINER_STATE in ckpt.tree):
        return
    suffix = int(named.group("step")) if named else None
    state = ckpt.tree.get(TRAINER_STATE)
    if isinstance(state, dict):    # a missing one is the reader's folder.missing-trainer-state
        yield from _trainer_state(ctx, state, suffix)
    yield from _adapter_optimizer(ctx)


def _trainer_state(ctx: ValidationContext, state: dict[str, Any], suffix: int | None) -> Iterable[Finding]:
    step = S.as_int(state.get("global_step"))
    if suffix is not None and step is not None and step != suffix:
        yield Finding("counters.hf-step-mismatch", Severity.ERROR, ctx.where("global_step", TRAINER_STATE),
                      f"the folder name says step {suffix} but trainer_state.json has global_step = {step}: "
                      "the Trainer resumes from global_step, so the LR schedule and the data position would "
                      f"be those of step {step}", ctx.repair("counters.hf-step-mismatch"))
    history = state.get("log_history")
    if not isinstance(history, list):
        return
    logged = [S.as_int(e.get("step")) for e in history if isinstance(e, dict)]
    steps = [s for s in logged if s is not None]
    backwards = next((i for i in range(1, len(steps)) if steps[i] < steps[i - 1]), None)
    if backwards is not None:
        yield Finding("counters.log-history-order", Severity.WARNING, ctx.where("log_history", TRAINER_STATE),
                      f"expected log_history steps in increasing order, found step {steps[backwards]} after "
                      f"step {steps[backwards - 1]}: two runs were merged into this folder")
    if step is not None and steps and max(steps) > step:
        yield Finding("counters.log-history-order", Severity.WARNING, ctx.where("log_history", TRAINER_STATE),
                      f"log_history reaches step {max(steps)} but global_step = {step}: the state was "
                      "written by a later step than the counter says", ctx.repair("counters.hf-step-mismatch"))


def _adapter_optimizer(ctx: ValidationContext) -> Iterable[Finding]:
    """A LoRA optimizer holds state for exactly the adapter's tensors: all of them are trainable."""
    tree, model = ctx.ckpt.tree, ctx.ckpt.model
    if ADAPTER_CONFIG not in tree and "adapter_config" not in ctx.ckpt.extra or not model:
        return
    member = next((m for m in OPTIMIZER_MEMBERS if m in tree), None)
    opt = tree.get(member) if member else None
    if S.is_optimizer_state(opt):
        yield from against_model(ctx, opt, model, "the adapter (all of whose tensors are trainable)",
                                 code="optimizer.adapter-mismatch", exact=True)
