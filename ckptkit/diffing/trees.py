"""Diffing decoded values: tensor pairs, maps of named tensors, and any nested plain value.

Everything that is not a model or an optimizer (scheduler, scaler, RNG, config, extra keys)
is compared by one walk over nested dicts and lists: dicts key by key, lists as one change
that says how long each is and where they first diverge (a loss history, an RNG state tuple),
unless they hold tensors, which are compared one by one.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ckptkit.core.checkpoint import TensorRef, iter_tensors
from ckptkit.diffing.report import (
    CHANGED,
    EQUAL,
    IDENTICAL,
    ONLY_A,
    ONLY_B,
    SHAPE_CHANGED,
    Change,
    TensorDiff,
    Tolerance,
)
from ckptkit.diffing.values import compare_values
from ckptkit.storage.safe_pickle import NumpyArray, PickledObject
from ckptkit.views.jsonable import summarize, to_jsonable
from ckptkit.views.keys import KeyRename, match_keys


@dataclass
class DiffContext:
    """Where a diff collects its results, and how far the value comparison has got."""

    tol: Tolerance
    progress: Callable[[int], None] | None = None     # called with bytes of A compared so far
    tensors: list[TensorDiff] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    done_bytes: int = 0

    def advance(self, nbytes: int) -> None:
        self.done_bytes += nbytes
        if self.progress is not None:
            self.progress(self.done_bytes)


def compare_tensor_pair(ctx: DiffContext, section: str, name: str, a: TensorRef, b: TensorRef,
                        name_b: str | None = None, label: str | None = None) -> TensorDiff:
    d = TensorDiff(section, name, SHAPE_CHANGED, a.dtype.name, b.dtype.name, tuple(a.shape), tuple(b.shape),
                   name_b=name_b if name_b != name else None, label=label)
    if a.shape == b.shape:
        d.values = compare_values(a, b, ctx.tol)
        d.status = IDENTICAL if d.values.identical_bytes else EQUAL if d.values.within_tolerance else CHANGED
        if a.numel == 1:
            d.value_a, d.value_b = a.scalar_value(), b.scalar_value()
    ctx.advance(a.nbytes)
    ctx.tensors.append(d)
    return d


def one_sided(ctx: DiffContext, section: str, name: str, t: TensorRef, in_a: bool,
              label: str | None = None) -> None:
    d = TensorDiff(section, name, ONLY_A if in_a else ONLY_B, label=label)
    if in_a:
        d.dtype_a, d.shape_a = t.dtype.name, tuple(t.shape)
    else:
        d.dtype_b, d.shape_b = t.dtype.name, tuple(t.shape)
    ctx.tensors.append(d)


def diff_tensor_maps(ctx: DiffContext, section: str, a: dict[str, TensorRef],
                     b: dict[str, TensorRef]) -> list[KeyRename]:
    """Compare named tensors (a model state dict), pairing keys across known prefixes."""
    match = match_keys(a, b)
    for name_a, name_b in match.pairs:
        compare_tensor_pair(ctx, section, name_a, a[name_a], b[name_b], name_b=name_b)
    for name in match.only_a:
        one_sided(ctx, section, name, a[name], in_a=True)
    for name in match.only_b:
        one_sided(ctx, section, name, b[name], in_a=False)
    return match.renamed


def diff_tree(ctx: DiffContext, section: str, key: str, a: Any, b: Any) -> None:
    """Compare two decoded values of any shape, recording changes under dotted `key`."""
    if isinstance(a, TensorRef) and isinstance(b, TensorRef):
        compare_tensor_pair(ctx, section, key, a, b)
    elif isinstance(a, PickledObject) and isinstance(b, PickledObject) and a.qualified_name == b.qualified_name:
        diff_dicts(ctx, section, key, a.fields(), b.fields())
    elif isinstance(a, dict) and isinstance(b, dict):
        diff_dicts(ctx, section, key, a, b)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        _diff_sequences(ctx, section, key, a, b)
    elif _scalar_tensor(a) or _scalar_tensor(b):
        _diff_scalar_forms(ctx, section, key, a, b)
    elif not values_equal(a, b):
        ctx.changes.append(Change(section, key, "changed", brief(a), brief(b)))


def _scalar_tensor(v: Any) -> bool:
    return isinstance(v, TensorRef) and v.numel == 1


def _diff_scalar_forms(ctx: DiffContext, section: str, key: str, a: Any, b: Any) -> None:
    """A number on one side, a one-element tensor on the other (torch >= 1.12 stores the
    optimizer's `step` as a tensor): compare the values, and say the storage form changed."""
    va = a.scalar_value() if isinstance(a, TensorRef) else a
    vb = b.scalar_value() if isinstance(b, TensorRef) else b
    form = "tensor" if isinstance(b, TensorRef) else "plain number"
    note = f"stored as a {form} in B"
    ctx.changes.append(Change(section, key, "changed", brief(va), brief(vb),
                              note if values_equal(va, vb) else f"{note}; value changed"))


def diff_dicts(ctx: DiffContext, section: str, key: str, a: dict[Any, Any], b: dict[Any, Any],
               skip: frozenset[str] = frozenset()) -> None:
    for k in list(a) + [k for k in b if k not in a]:
        if str(k) in skip:
            continue
        sub = f"{key}.{k}" if key else str(k)
        if k not in b:
            only_in(ctx, section, sub, a[k], in_a=True)
        elif k not in a:
            only_in(ctx, section, sub, b[k], in_a=False)
        else:
            diff_tree(ctx, section, sub, a[k], b[k])


def only_in(ctx: DiffContext, section: str, key: str, value: Any, in_a: bool) -> None:
    """A value present on one side: tensors are listed one by one, anything else as one change."""
    if isinstance(value, TensorRef):
        one_sided(ctx, section, key, value, in_a)
        return
    kind = ONLY_A if in_a else ONLY_B
    ctx.changes.append(Change(section, key, kind, brief(value) if in_a else None, None if in_a else brief(value)))


def _diff_sequences(ctx: DiffContext, section: str, key: str, a: Any, b: Any) -> None:
    if _holds_tensors(a) or _holds_tensors(b):
        for i in range(min(len(a), len(b))):
            diff_tree(ctx, section, f"{key}.{i}", a[i], b[i])
        if len(a) != len(b):
            ctx.changes.append(Change(section, key, "changed", f"{len(a)} items", f"{len(b)} items",
                                      f"length {len(a)} -> {len(b)}"))
        return
    note = sequence_divergence(a, b)
    if note:
        ctx.changes.append(Change(section, key, "changed", brief(a), brief(b), note))


def sequence_divergence(a: Any, b: Any) -> str:
    """"" when equal, else lengths, the first index where they differ and how many differ."""
    common = min(len(a), len(b))
    differing = [i for i in range(common) if not values_equal(a[i], b[i])]
    if not differing and len(a) == len(b):
        return ""
    parts = [f"length {len(a)} -> {len(b)}" if len(a) != len(b) else f"length {len(a)}"]
    if differing:
        i = differing[0]
        parts.append(f"first differs at index {i} ({summarize(to_jsonable(a[i]), 40)} vs "
                     f"{summarize(to_jsonable(b[i]), 40)}); {len(differing)} of {common} shared entries differ")
    else:
        parts.append("the shorter is the start of the longer")
    return ", ".join(parts)


def _holds_tensors(value: Any) -> bool:
    return next(iter_tensors(value), None) is not None


def values_equal(a: Any, b: Any) -> bool:
    """Deep equality of decoded values; NaN equals NaN, tensors compare by bytes."""
    if isinstance(a, TensorRef) or isinstance(b, TensorRef):
        if not (isinstance(a, TensorRef) and isinstance(b, TensorRef)) or a.shape != b.shape:
            return False
        return a.dtype == b.dtype and compare_values(a, b, Tolerance()).identical_bytes
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, PickledObject) or isinstance(b, PickledObject):
        return (isinstance(a, PickledObject) and isinstance(b, PickledObject)
                and a.qualified_name == b.qualified_name and values_equal(a.fields(), b.fields()))
    if isinstance(a, NumpyArray) or isinstance(b, NumpyArray):
        return bool(a == b)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(values_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b) and not (_is_number(a) and _is_number(b)):
        return False
    return bool(a == b)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def brief(value: Any) -> Any:
    """A JSON-ready value, or a short description when the value is large."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return to_jsonable(value)
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return f"list of {len(value)}"
    return summarize(to_jsonable(value) if not isinstance(value, TensorRef) else value, 60)
