"""What `diff` takes and returns: dataclasses the CLI renders as tables or JSON.

Free of numpy and torch, so the CLI can build its options without importing either.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ckptkit.views.jsonable import to_jsonable
from ckptkit.views.keys import KeyRename

SCHEMA_VERSION = 1
SECTIONS = ("model", "optimizer", "scheduler", "scaler", "rng", "meta")

# TensorDiff.status values
IDENTICAL = "identical"        # same bytes
EQUAL = "equal"                # different bytes (or dtype), values equal within tolerance
CHANGED = "changed"            # some values outside tolerance
SHAPE_CHANGED = "shape-changed"
ONLY_A = "only-in-a"
ONLY_B = "only-in-b"


@dataclass(frozen=True)
class Tolerance:
    """Elements a, b are equal when |a - b| <= atol + rtol * |b| (numpy.isclose's rule)."""

    atol: float = 0.0
    rtol: float = 0.0


@dataclass
class ValueStats:
    """How the values of two same-shaped tensors differ. `rel_l2_diff` = ||a - b|| / ||a||."""

    numel: int
    identical_bytes: bool
    max_abs_diff: float
    rel_l2_diff: float
    changed_elements: int       # elements outside the tolerance
    diff_sq_sum: float          # ||a - b||^2 and ||a||^2, kept to aggregate modules
    ref_sq_sum: float

    @property
    def changed_fraction(self) -> float:
        return self.changed_elements / self.numel if self.numel else 0.0

    @property
    def within_tolerance(self) -> bool:
        return self.changed_elements == 0

    @classmethod
    def identical(cls, numel: int) -> ValueStats:
        # ||a||^2 is not computed (that would mean decoding): 0 marks "not needed".
        return cls(numel, True, 0.0, 0.0, 0, 0.0, 0.0)


@dataclass(frozen=True)
class DiffOptions:
    atol: float = 0.0
    rtol: float = 0.0
    sections: tuple[str, ...] = SECTIONS
    top: int = 10


@dataclass
class TensorDiff:
    """One tensor of A against its partner in B (same key, or the same key under a known prefix)."""

    section: str                    # "model", "optimizer", "scheduler", ...
    name: str                       # key in A (in B when only in B)
    status: str
    dtype_a: str | None = None
    dtype_b: str | None = None
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    name_b: str | None = None       # the key in B, when it differs from `name`
    label: str | None = None        # what it belongs to: an optimizer state's parameter name
    values: ValueStats | None = None
    value_a: Any = None             # the values of one-element tensors (optimizer `step`)
    value_b: Any = None

    @property
    def dtype_changed(self) -> bool:
        return self.dtype_a is not None and self.dtype_b is not None and self.dtype_a != self.dtype_b

    @property
    def renamed(self) -> bool:
        return self.name_b is not None and self.name_b != self.name

    @property
    def differs_in_content(self) -> bool:
        """Differs in more than its key: values, shape, dtype, or present on one side only."""
        return self.status not in (IDENTICAL, EQUAL) or self.dtype_changed

    @property
    def differs(self) -> bool:
        return self.differs_in_content or self.renamed

    def to_json(self) -> dict[str, Any]:
        v = self.values
        return to_jsonable({
            "section": self.section, "name": self.name, "name_b": self.name_b, "label": self.label,
            "status": self.status, "differs": self.differs, "dtype_a": self.dtype_a, "dtype_b": self.dtype_b,
            "shape_a": list(self.shape_a) if self.shape_a is not None else None,
            "shape_b": list(self.shape_b) if self.shape_b is not None else None,
            "value_a": self.value_a, "value_b": self.value_b,
            "identical_bytes": v.identical_bytes if v else None,
            "max_abs_diff": v.max_abs_diff if v else None, "rel_l2_diff": v.rel_l2_diff if v else None,
            "changed_elements": v.changed_elements if v else None,
            "changed_fraction": v.changed_fraction if v else None, "numel": v.numel if v else None})


@dataclass(frozen=True)
class Change:
    """A difference that is not a tensor's values: a counter, a metric, a config field, a key."""

    section: str       # "meta", "optimizer", "scheduler", "scaler", "rng", "model"
    key: str           # dotted: "progress.global_step", "param_groups.0.weight_decay", "config.lr"
    kind: str          # "changed" | "only-in-a" | "only-in-b"
    a: Any = None      # JSON-ready value (or a short summary of a large one)
    b: Any = None
    note: str = ""     # e.g. for histories: "length 10 -> 12, first differs at index 3"

    def to_json(self) -> dict[str, Any]:
        return to_jsonable({"section": self.section, "key": self.key, "kind": self.kind,
                            "a": self.a, "b": self.b, "note": self.note})


@dataclass
class GroupSummary:
    """Tensors of one module (model) or one state kind (optimizer: exp_avg, exp_avg_sq...)."""

    section: str
    group: str
    tensors: int
    identical: int            # same bytes (whatever their key)
    differing: int            # values, shape or dtype differ, or only on one side (renames aside)
    max_abs_diff: float
    elements: int
    changed_elements: int     # outside the tolerance, over the group's compared tensors

    @property
    def changed_fraction(self) -> float:
        return self.changed_elements / self.elements if self.elements else 0.0

    def to_json(self) -> dict[str, Any]:
        return to_jsonable({**self.__dict__, "changed_fraction": self.changed_fraction})


@dataclass
class SideInfo:
    path: str
    format: str
    family: str
    progress: str
    # What reading this side found unsafe (security.* findings: pickled code, pickled classes):
    # a diff that says "equal" must not hide that torch.load of this file would run code.
    security: list[dict[str, Any]] = field(default_factory=list)
    # What reading this side could not read (the reader's error findings: an unreadable item, a
    # missing shard): a value missing on this side may be damage, not a difference, and a pair
    # with damage on either side is never called equal.
    damage: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CheckpointDiff:
    a: SideInfo
    b: SideInfo
    tolerance: Tolerance
    sections: list[str]
    tensors: list[TensorDiff] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    renamed: list[KeyRename] = field(default_factory=list)
    groups: list[GroupSummary] = field(default_factory=list)
    top: list[TensorDiff] = field(default_factory=list)     # the most changed tensors, most first

    @property
    def differing_tensors(self) -> list[TensorDiff]:
        return [t for t in self.tensors if t.differs]

    @property
    def difference_count(self) -> int:
        return len(self.differing_tensors) + len(self.changes)

    @property
    def equal(self) -> bool:
        """Equal within tolerance: both sides read whole, and no structural, value or metadata
        difference in the sections compared."""
        return self.difference_count == 0 and not self.a.damage and not self.b.damage

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION, "equal": self.equal, "differences": self.difference_count,
            "a": self.a.__dict__, "b": self.b.__dict__,
            "tolerance": {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol},
            "sections": self.sections,
            "renamed": [{"a": r.a, "b": r.b, "how": r.describe()} for r in self.renamed],
            "changes": [c.to_json() for c in self.changes],
            "groups": [g.to_json() for g in self.groups],
            "top": [t.name for t in self.top],
            "tensors": [t.to_json() for t in self.tensors],
        }


def summarize_groups(section: str, diffs: list[TensorDiff], group_of: dict[str, str]) -> list[GroupSummary]:
    """One row per group (in first-seen order). Groups report changed elements, not a relative L2
    norm: ||a|| of a group would need decoding its identical tensors too, which diff avoids."""
    rows: dict[str, list[TensorDiff]] = {}
    for d in diffs:
        if d.section == section and d.name in group_of:
            rows.setdefault(group_of[d.name], []).append(d)
    return [_group_row(section, group, members) for group, members in rows.items()]


def _group_row(section: str, group: str, members: list[TensorDiff]) -> GroupSummary:
    stats = [m.values for m in members if m.values is not None]
    return GroupSummary(section, group, len(members),
                        identical=sum(1 for m in members if m.status == IDENTICAL),
                        differing=sum(1 for m in members if m.differs_in_content),
                        max_abs_diff=max((s.max_abs_diff for s in stats), default=0.0),
                        elements=sum(s.numel for s in stats),
                        changed_elements=sum(s.changed_elements for s in stats))


def most_changed(diffs: list[TensorDiff], n: int) -> list[TensorDiff]:
    """The `n` tensors whose values moved most (relative L2, then max |a-b|); unchanged ones never."""
    moved = [d for d in diffs if d.values is not None and d.values.changed_elements > 0]
    moved.sort(key=lambda d: (d.values.rel_l2_diff, d.values.max_abs_diff), reverse=True)  # type: ignore[union-attr]
    return moved[:n]
