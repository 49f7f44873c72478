"""Diffing training state: optimizer (per parameter), scheduler, AMP scaler, RNG.

Optimizer state is keyed by parameter index; the indices are matched across A and B as they
are (the same model saves the same order) and named after A's model keys by order and shape
(`sections.optimizer_param_names`), so a change reads "state.3.exp_avg (fc2.weight)". State keyed
by parameter name on one side (FSDP's form) and by index on the other is paired by position.
"""
from __future__ import annotations

from typing import Any

from ckptkit.core.checkpoint import TensorRef
from ckptkit.diffing.report import ONLY_A, ONLY_B, Change
from ckptkit.diffing.trees import DiffContext, brief, compare_tensor_pair, diff_dicts, diff_tree, one_sided, only_in
from ckptkit.views import sections as S

# Reported under "meta" as learning rates, so they are not repeated per group here.
_META_GROUP_KEYS = frozenset({"lr"})


def diff_section(ctx: DiffContext, section: str, a: Any, b: Any) -> None:
    """A whole section (scheduler, scaler, rng) present on one side, both, or neither."""
    if a is None and b is None:
        return
    if a is None or b is None:
        ctx.changes.append(Change(section, "(section)", ONLY_A if b is None else ONLY_B,
                                  brief(a) if a is not None else None, brief(b) if b is not None else None,
                                  f"no {section} state in {'B' if b is None else 'A'}"))
        return
    # Dicts read best as their own keys ("last_epoch"); anything else under the section's name.
    diff_tree(ctx, section, "" if isinstance(a, dict) and isinstance(b, dict) else section, a, b)


def diff_optimizer(ctx: DiffContext, a: Any, b: Any, model_a: dict[str, TensorRef],
                   model_b: dict[str, TensorRef]) -> None:
    if not (S.is_optimizer_state(a) and S.is_optimizer_state(b)):
        diff_section(ctx, "optimizer", a, b)
        return
    to_b = _position_map(a, b)
    _diff_param_groups(ctx, a["param_groups"], b["param_groups"], params=to_b is None)
    # (compared by position, the state is keyed by B's ids: B's names first)
    names = (S.optimizer_param_names(b, model_b) or S.optimizer_param_names(a, model_a) if to_b is not None else
             S.optimizer_param_names(a, model_a) or S.optimizer_param_names(b, model_b))
    state_a = a["state"] if isinstance(a["state"], dict) else {}
    state_b = b["state"] if isinstance(b["state"], dict) else {}
    if to_b is not None:
        named = "A" if isinstance(next(iter(to_b)), str) else "B"
        ctx.changes.append(Change("optimizer", "param_groups.params", "changed", f"{len(to_b)} parameters",
                                  f"{len(to_b)} parameters", f"{named} keys its optimizer state by parameter name "
                                  "(FSDP, get_optimizer_state_dict), the other by index: compared position by "
                                  "position"))
        state_a = {to_b.get(k, k): v for k, v in state_a.items()}
    for index in list(state_a) + [i for i in state_b if i not in state_a]:
        label = names.get(index) or (index if isinstance(index, str) else None)
        key = f"state.{index}"
        if index not in state_b or index not in state_a:
            in_a = index in state_a
            note = f"parameter {label}" if label else ""
            ctx.changes.append(Change("optimizer", key, ONLY_A if in_a else ONLY_B,
                                      brief(state_a.get(index)), brief(state_b.get(index)), note))
            continue
        _diff_param_state(ctx, key, state_a[index], state_b[index], label)
    rest = frozenset({"state", "param_groups"})
    diff_dicts(ctx, "optimizer", "", a, b, skip=rest)


def _diff_param_state(ctx: DiffContext, key: str, a: Any, b: Any, label: str | None) -> None:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        diff_tree(ctx, "optimizer", key, a, b)
        return
    for name in list(a) + [n for n in b if n not in a]:
        sub = f"{key}.{name}"
        va, vb = a.get(name), b.get(name)
        if isinstance(va, TensorRef) and isinstance(vb, TensorRef):
            compare_tensor_pair(ctx, "optimizer", sub, va, vb, label=label)
        elif name not in b or name not in a:
            value = va if name in a else vb
            if isinstance(value, TensorRef):
                one_sided(ctx, "optimizer", sub, value, in_a=name in a, label=label)
            else:
                only_in(ctx, "optimizer", sub, value, in_a=name in a)
        else:
            diff_tree(ctx, "optimizer", sub, va, vb)


def _position_map(a: dict[str, Any], b: dict[str, Any]) -> dict[Any, Any] | None:
    """A's parameter ids -> B's, position by position, when one optimizer names its parameters
    (FSDP's optim_state_dict, get_optimizer_state_dict: {"state": {"fc.weight": ...}}) and the
    other numbers them (Optimizer.state_dict()); torch's load_state_dict matches them by position
    too. None when both use one form or their parameter lists differ in length."""
    ids = []
    for opt in (a, b):
        groups = opt["param_groups"] if isinstance(opt["param_groups"], list) else []
        ids.append([p for g in groups if isinstance(g, dict) and isinstance(g.get("params"), list)
                    for p in g["params"]])
    kinds = {frozenset(map(type, side)) for side in ids}
    if len(ids[0]) != len(ids[1]) or not ids[0] or kinds != {frozenset({str}), frozenset({int})}:
        return None
    return dict(zip(ids[0], ids[1], strict=True))


def _diff_param_groups(ctx: DiffContext, a: Any, b: Any, params: bool = True) -> None:
    """`params`: compare the groups' parameter id lists too (not when they are told apart by form)."""
    if not (isinstance(a, list) and isinstance(b, list)):
        diff_tree(ctx, "optimizer", "param_groups", a, b)
        return
    skip = _META_GROUP_KEYS if params else _META_GROUP_KEYS | {"params"}
    for i in range(max(len(a), len(b))):
        key = f"param_groups.{i}"
        if i >= len(b) or i >= len(a):
            only_in(ctx, "optimizer", key, a[i] if i < len(a) else b[i], in_a=i < len(a))
        elif isinstance(a[i], dict) and isinstance(b[i], dict):
            diff_dicts(ctx, "optimizer", key, a[i], b[i], skip=skip)
        else:
            diff_tree(ctx, "optimizer", key, a[i], b[i])


def learning_rates(opt: Any) -> list[Any] | None:
    """The learning rate of each param group, or None without an optimizer."""
    if not S.is_optimizer_state(opt):
        return None
    return [g.get("lr") for g in opt["param_groups"] if isinstance(g, dict)]
