"""Rebuilding a checkpoint tree over the bytes that survived, dropping what did not.

Every tensor's storage is looked up in `found` (its record key -> where its verified bytes lie
in the damaged file). Tensors whose storage was not recovered are removed with their dict
entry; a list or tuple that loses an element is removed whole (its positions would shift and
mean something else). Storages are renumbered 0, 1, ... in order of first use, as torch does.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ckptkit.core.checkpoint import ByteRange, StorageRef, TensorRef
from ckptkit.salvage.report import LostItem, RecoveredItem


@dataclass
class Rebuilt:
    tree: Any
    recovered: list[RecoveredItem] = field(default_factory=list)
    lost: list[LostItem] = field(default_factory=list)
    crcs: dict[str, int] = field(default_factory=dict)     # new storage key -> CRC-32 of its bytes
    ranges: dict[str, ByteRange] = field(default_factory=dict)   # new storage key -> its bytes


_GONE = object()


class _Rebuilder:
    def __init__(self, locate: Callable[[StorageRef], tuple[ByteRange, int] | str]) -> None:
        self.locate = locate
        self.result = Rebuilt(None)
        self.storages: dict[int, StorageRef | str] = {}

    def storage_for(self, old: StorageRef) -> StorageRef | str:
        if id(old) not in self.storages:
            found = self.locate(old)
            if isinstance(found, str):
                self.storages[id(old)] = found
            else:
                where, crc = found
                key = str(sum(1 for s in self.storages.values() if isinstance(s, StorageRef)))
                self.storages[id(old)] = StorageRef(key, old.dtype, old.numel, old.location,
                                                    locate=_fixed(where), stored_nbytes=where.length)
                self.result.crcs[key] = crc
                self.result.ranges[key] = where
        return self.storages[id(old)]

    def visit(self, value: Any, path: str) -> Any:
        if isinstance(value, TensorRef):
            storage = self.storage_for(value.storage)
            if isinstance(storage, str):
                self.result.lost.append(LostItem(path, storage))
                return _GONE
            self.result.recovered.append(RecoveredItem(path, value.describe(), value.nbytes, "CRC-32"))
            return dataclasses.replace(value, storage=storage)
        if isinstance(value, dict):
            out = OrderedDict() if isinstance(value, OrderedDict) else {}
            for k, v in value.items():
                new = self.visit(v, f"{path}.{k}" if path else str(k))
                if new is not _GONE:
                    out[k] = new
            return out
        if isinstance(value, (list, tuple)):
            lost_before = len(self.result.lost)
            items = [self.visit(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(value)]
            if len(self.result.lost) > lost_before:
                self._drop_container(path, lost_before)
                return _GONE
            return type(value)(items) if isinstance(value, list) else tuple(items)
        return value

    def _drop_container(self, path: str, lost_before: int) -> None:
        """Whole-list loss: the elements that survived are not written either; say so."""
        inside = [r for r in self.result.recovered if r.name.startswith(path + ".")]
        self.result.recovered = [r for r in self.result.recovered if not r.name.startswith(path + ".")]
        self.result.lost.extend(LostItem(r.name, f"intact, but dropped with {path or 'the list'}: "
                                         "another element of that list was lost") for r in inside)


def _fixed(where: ByteRange) -> Callable[[], ByteRange]:
    return lambda: where


def rebuild(tree: Any, locate: Callable[[StorageRef], tuple[ByteRange, int] | str],
            optimizer_key: str | None = None) -> Rebuilt:
    """`tree` over the storages `locate` finds ((bytes, CRC-32), or why the storage is lost).

    `optimizer_key`: where the optimizer state lies (dotted; "" for the top level). A parameter
    whose moments are half there would resume with wrong statistics, so its whole entry goes."""
    builder = _Rebuilder(locate)
    new = builder.visit(tree, "")
    builder.result.tree = {} if new is _GONE else new
    if optimizer_key is not None:
        _drop_partial_optimizer_entries(builder.result, optimizer_key)
    return builder.result


def _drop_partial_optimizer_entries(result: Rebuilt, key: str) -> None:
    state = result.tree
    for part in [p for p in key.split(".") if p]:
        state = state.get(part) if isinstance(state, dict) else None
    state = state.get("state") if isinstance(state, dict) else None
    if not isinstance(state, dict):
        return
    base = f"{key}.state." if key else "state."
    for param in list(state):
        where = f"{base}{param}."
        if any(x.name.startswith(where) for x in result.lost):
            del state[param]
            kept = [r for r in result.recovered if r.name.startswith(where)]
            result.recovered = [r for r in result.recovered if not r.name.startswith(where)]
            result.lost.extend(LostItem(r.name, "intact, but dropped: other state of the same parameter "
                                        "was lost") for r in kept)
