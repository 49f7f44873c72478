"""Optimizer state against itself, the model it should belong to, and the scheduler."""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ckptkit.core.checkpoint import Finding, Severity, TensorRef
from ckptkit.validation.param_matching import describe_shape, pair
from ckptkit.views import sections as S

if TYPE_CHECKING:
    from ckptkit.validation import ValidationContext


def check_optimizer(ctx: ValidationContext) -> Iterable[Finding]:
    opt = ctx.ckpt.optimizer
    if not S.is_optimizer_state(opt):
        return
    yield from _groups(ctx, opt)
    yield from _learning_rates(ctx, opt)
    adapter_folder = "adapter_config" in ctx.ckpt.extra or (
        isinstance(ctx.ckpt.tree, dict) and "adapter_config.json" in ctx.ckpt.tree)
    if ctx.ckpt.model and not adapter_folder:    # adapters: hf_folder.py pairs them exactly
        yield from against_model(ctx, opt, ctx.ckpt.model, "the model in this checkpoint")


def _groups(ctx: ValidationContext, opt: dict[str, Any]) -> Iterable[Finding]:
    """Param indices must be disjoint across groups, and every state entry must belong to a group."""
    seen: dict[Any, int] = {}
    for p in ctx.optimizer_params(opt):
        if p.index in seen:
            yield Finding("optimizer.param-in-two-groups", Severity.ERROR,
                          ctx.section_where("optimizer", "param_groups"),
                          f"parameter {p.index} is listed in group {seen[p.index]} and again in group "
                          f"{p.group}: expected each parameter in exactly one group; load_state_dict "
                          "will refuse this state")
        seen.setdefault(p.index, p.group)
    state = opt["state"] if isinstance(opt["state"], dict) else {}
    orphans = [k for k in state if k not in seen]
    if orphans:
        shown = ", ".join(map(str, orphans[:5])) + (" ..." if len(orphans) > 5 else "")
        yield Finding("optimizer.state-without-group", Severity.ERROR, ctx.section_where("optimizer", "state"),
                      f"state entries {shown} belong to no param group (groups list {len(seen)} "
                      f"parameters, state has {len(state)} entries): the state is damaged or was "
                      "edited by hand")


def _learning_rates(ctx: ValidationContext, opt: dict[str, Any]) -> Iterable[Finding]:
    sched = ctx.ckpt.scheduler
    last_lr = sched.get("_last_lr") if isinstance(sched, dict) else None
    groups = [g for g in opt.get("param_groups") or [] if isinstance(g, dict)]
    for i, group in enumerate(groups):
        lr = group.get("lr")
        if isinstance(lr, TensorRef):
            continue
        if S.is_number(lr) and (not math.isfinite(lr) or lr < 0):
            yield Finding("optimizer.bad-lr", Severity.ERROR, ctx.section_where("optimizer", f"param_groups.{i}.lr"),
                          f"expected a finite, non-negative learning rate, found {lr}")
        if (isinstance(last_lr, list) and i < len(last_lr) and S.is_number(lr) and S.is_number(last_lr[i])
                and not math.isclose(lr, last_lr[i], rel_tol=1e-6, abs_tol=1e-12)):
            yield Finding("optimizer.lr-scheduler-mismatch", Severity.WARNING,
                          ctx.section_where("optimizer", f"param_groups.{i}.lr"),
                          f"group {i} lr = {lr:g} but the scheduler's _last_lr[{i}] = {last_lr[i]:g}: "
                          "the two were saved at different moments, or lr was overridden after the "
                          "scheduler stepped; the resumed learning rate will follow the scheduler")


def against_model(ctx: ValidationContext, opt: dict[str, Any], model: dict[str, TensorRef], model_desc: str,
                  code: str = "optimizer.param-set-mismatch", exact: bool = False) -> Iterable[Finding]:
    """Every optimizer entry must find a parameter of its shape (all of them when `exact`)."""
    pairing = pair(ctx.optimizer_params(opt), model)
    if pairing.optimizer_count == 0 or (pairing.exact if exact else pairing.agrees):
        return
    count_fits = (pairing.optimizer_count == pairing.model_count if exact
                  else pairing.optimizer_count <= pairing.model_count)
    stray = ""
    if pairing.unmatched is not None:
        i, p = pairing.unmatched
        stray = (f"optimizer entry {i} (id {p.index}, group {p.group}) has state of shape {describe_shape(p.shape)}, "
                 f"which no remaining parameter of {model_desc} has")
    if count_fits:
        # The count is right and a shape is not: say so, not "expected at most 6, found 6".
        what = (f"{pairing.optimizer_count} entries for the {pairing.model_count} parameters of {model_desc}, "
                f"but {stray}")
    else:
        expected = f"{pairing.model_count}" if exact else f"at most {pairing.model_count}"
        what = (f"expected {expected} entries shaped like the parameters of {model_desc}, "
                f"found {pairing.optimizer_count}" + (f"; {stray}" if stray else ""))
    yield Finding(code, Severity.ERROR, ctx.section_where("optimizer", "state"),
                  f"optimizer state built for a different set of trainable parameters: {what}. "
                  "Resuming would fail in load_state_dict or pair the Adam moments with the wrong weights")
