"""What a repair changes: one `Change` per stored value, the plan and the result a command returns.

A change addresses a value by its key path in the decoded tree (``("data_position", "epoch")``)
so the same record serves to show the diff, to apply it, and to check the written file.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ckptkit.core.checkpoint import TensorRef
from ckptkit.storage.safe_pickle import PickledObject
from ckptkit.views.jsonable import to_jsonable

KeyPath = tuple[Any, ...]
ABSENT = "(absent)"


@dataclass
class Change:
    """One stored value a repair sets (kind "set") or one dict key it renames (kind "rename")."""

    file: str                 # the file written (a member's name inside a folder checkpoint)
    path: KeyPath             # key path in that file's tree; for "rename", the dict holding the key
    before: Any
    after: Any
    kind: str = "set"

    @property
    def key(self) -> str:
        return ".".join(map(str, self.path)) if self.path else "(top level)"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "key": self.key, "kind": self.kind,
                "before": to_jsonable(self.before), "after": to_jsonable(self.after)}


@dataclass
class RepairPlan:
    """What a repair would do to one checkpoint; `changes` empty means nothing to do."""

    path: str
    format: str
    family: str
    action: str                                   # "fix-epoch --epoch 2 --complete", "repair compat.module-prefix"
    changes: list[Change] = field(default_factory=list)
    files: list[str] = field(default_factory=list)          # files that would be rewritten
    progress_before: str | None = None
    progress_after: str | None = None
    cannot_fix: list[str] = field(default_factory=list)     # left inconsistent, with how to proceed
    notes: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)          # finding codes a repair addresses

    @property
    def nothing_to_do(self) -> bool:
        return not self.changes

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "family": self.family, "action": self.action,
                "fixes": list(self.fixes), "changes": [c.to_json() for c in self.changes],
                "files": list(self.files), "progress_before": self.progress_before,
                "progress_after": self.progress_after, "cannot_fix": list(self.cannot_fix),
                "notes": list(self.notes)}


@dataclass
class RepairResult:
    """A plan and what became of it."""

    plan: RepairPlan
    written: bool = False
    dry_run: bool = False
    backups: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.written:
            return "written"
        if self.plan.nothing_to_do and self.plan.cannot_fix:
            # Not "already consistent": what is listed as left is exactly what is not.
            return "nothing written: nothing here can be fixed automatically"
        if self.plan.nothing_to_do:
            return "already consistent, nothing written"
        return "dry run, nothing written" if self.dry_run else "nothing written"

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "written": self.written, "dry_run": self.dry_run,
                "backups": list(self.backups), **self.plan.to_json()}


def get_path(tree: Any, path: KeyPath, default: Any = ABSENT) -> Any:
    """The value at a key path; ints index lists (a pickled object inside a list of configs)."""
    for key in path:
        if isinstance(tree, dict) and key in tree:
            tree = tree[key]
        elif isinstance(tree, list) and isinstance(key, int) and 0 <= key < len(tree):
            tree = tree[key]
        else:
            return default
    return tree


def plan_sets(file: str, tree: Any, values: dict[KeyPath, Any]) -> list[Change]:
    """Changes that set each path to its value, leaving out the ones already holding it."""
    return [Change(file, path, get_path(tree, path), after) for path, after in values.items()
            if first_difference(get_path(tree, path), after) is not None]


def apply_changes(tree: Any, changes: Iterable[Change]) -> None:
    """Apply changes in place; renames keep each dict's type, key order and attributes."""
    renames: dict[KeyPath, dict[Any, Any]] = {}
    for change in changes:
        if change.kind == "rename":
            renames.setdefault(change.path, {})[change.before] = change.after
            continue
        parent = get_path(tree, change.path[:-1], None)
        if not isinstance(parent, (dict, list)):
            raise KeyError(f"{change.key}: no dict or list to set it in")
        parent[change.path[-1]] = change.after
    for path, mapping in renames.items():
        holder = get_path(tree, path, None)
        if not isinstance(holder, dict):
            raise KeyError(f"{'.'.join(map(str, path))}: no dict to rename keys in")
        items = [(mapping.get(k, k), v) for k, v in holder.items()]
        holder.clear()
        holder.update(items)


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """Where two decoded trees differ first ("model_state_dict.fc.weight: dtype"), or None if equal.

    Tensors compare by their description (dtype, shape, stride, offset, storage key), not bytes:
    storage bytes are checked separately, record by record.
    """
    here = where or "(top level)"
    if isinstance(a, TensorRef) or isinstance(b, TensorRef):
        return None if _same_tensor(a, b) else f"{here}: tensor"
    if isinstance(a, PickledObject) or isinstance(b, PickledObject):
        return _object_difference(a, b, here)
    if type(a) is not type(b):
        return f"{here}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        if list(a) != list(b):
            return f"{here}: keys"
        return _first_child_difference(((k, a[k], b[k]) for k in a), where)
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{here}: length"
        return _first_child_difference(((i, x, y) for i, (x, y) in enumerate(zip(a, b, strict=True))), where)
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return None
    return None if a == b else f"{here}: {a!r} vs {b!r}"


def _first_child_difference(children: Iterable[tuple[object, Any, Any]], where: str) -> str | None:
    """The first difference among (key or index, a's child, b's child), named below `where`."""
    for name, x, y in children:
        found = first_difference(x, y, f"{where}.{name}" if where else str(name))
        if found:
            return found
    return None


def _object_difference(a: Any, b: Any, here: str) -> str | None:
    """Pickled objects differ by their class, how they were built, or their args, state, items."""
    if not (isinstance(a, PickledObject) and isinstance(b, PickledObject)) or (
            a.qualified_name != b.qualified_name or a.called != b.called):
        return f"{here}: pickled object"
    return (first_difference(list(a.args), list(b.args), here + "(args)")
            or first_difference(a.state, b.state, here + "(state)")
            or first_difference(list(a.items), list(b.items), here + "(items)"))


def _same_tensor(a: Any, b: Any) -> bool:
    if not (isinstance(a, TensorRef) and isinstance(b, TensorRef)):
        return False
    return (a.dtype.name, a.shape, a.stride, a.storage_offset, a.storage.key, a.requires_grad,
            a.is_parameter) == (b.dtype.name, b.shape, b.stride, b.storage_offset, b.storage.key,
                                b.requires_grad, b.is_parameter)
