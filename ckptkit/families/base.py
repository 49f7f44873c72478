"""What every layout family module provides, and the helpers they share.

A family is the dict layout one training system writes. Its module is the one home of that
system's conventions: how the layout is recognised, what each stored counter means (-> `Progress`),
the inverse `fix-epoch` writes, its file and folder names, its traps, and what the system's own
resume code does with a checkpoint (`ResumePrediction`). Nothing outside ``ckptkit.families``
compares family names or restates a convention: it asks the family.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Progress, ResumePrediction, Severity, TensorRef
from ckptkit.core.errors import CkptkitError
from ckptkit.views import sections as S

Tree = dict[str, Any]
KeyPath = tuple[str, ...]
CounterValues = dict[KeyPath, Any]


class UnrepresentableProgress(ValueError):
    """A family's counters cannot express the requested progress (e.g. mid-epoch for LlamaRec)."""


@dataclass(frozen=True)
class TrapHit:
    """One family trap found in a checkpoint; validation turns it into a `Finding`."""

    code: str                       # "counters.untrained-progress"
    severity: Severity
    key: str                        # the stored key it is about ("epoch", "optimizer_state_dict")
    message: str
    fix: tuple[str, ...] | None = None   # ckptkit command and arguments after the path, if one fixes it


@dataclass(frozen=True)
class FamilyNames:
    """The file and folder names the system itself gives its checkpoints."""

    recent: tuple[str, ...] = ()    # overwritten with the newest save
    best: tuple[str, ...] = ()
    final: tuple[str, ...] = ()
    temporary: re.Pattern[str] | None = None   # a save in progress (never resume from it)
    backup: re.Pattern[str] | None = None      # the previous copy kept during a swap
    # Saves made between two saves of the recent file (timm's recovery-E-U.pth.tar every
    # --recovery-interval updates): further than it without making it stale; their name records
    # where inside the epoch they were made, which fix-epoch cannot change.
    between: re.Pattern[str] | None = None
    # The name a temporary or backup copy stands for: the patterns' `name` group, or this of
    # their match where no part of the copy's name says it (timm's tmp.pth.tar becomes last.pth.tar).
    copy_of: Callable[[re.Match[str]], str] | None = None
    state_file: str | None = None   # the member holding the counters in the system's checkpoint folder


@dataclass(frozen=True)
class Family:
    name: str
    description: str                # in users' words
    matches: Callable[[Tree], bool]
    progress: Callable[[Tree, Path], Progress]
    # The inverse of `progress`: stored counter values (by key path) that make `progress` read
    # back (epochs_completed, step_in_epoch). None: the family cannot record an epoch.
    record: Callable[[Tree, int, int], CounterValues] | None = None
    # Progress fields read straight from one top-level key, as (field, key).
    plain_counters: tuple[tuple[str, str], ...] = ()
    names: FamilyNames = field(default_factory=FamilyNames)
    # What the system's own resume does with a checkpoint of this family (None: no such code known).
    resume: Callable[[Tree, Path, Progress], ResumePrediction | None] | None = None
    traps: Callable[[Tree, Path, Progress], Iterator[TrapHit]] | None = None
    # Counters (key paths) to show as "stored" in inspect --json.
    counter_keys: tuple[KeyPath, ...] = (("epoch",), ("global_step",))
    # Histories that hold one entry per finished epoch (fix-epoch says when they disagree).
    epoch_histories: bool = False
    # The file name encodes the epoch (fix-epoch says how to rename).
    name_pattern: re.Pattern[str] | None = None
    # What fix-epoch leaves as is in this layout (counters it cannot derive from an epoch), in words.
    left_as_is: Callable[[Tree], list[str]] | None = None
    # Why the system is known to train with fp16 AMP (its scripts), in words; None: not known.
    amp_evidence: str | None = None
    # Keys holding its model, tried before the usual names (Ultralytics keeps it in 'ema').
    model_keys: tuple[str, ...] = ()
    # Classes its own resume lets torch.load(weights_only=True) load (torch.serialization.safe_globals).
    safe_globals: tuple[str, ...] = ()
    # Its resume sets the LR schedule from the stored epoch, so no scheduler state is saved or needed.
    schedule_from_epoch: bool = False

    @property
    def system(self) -> str:
        """The system's name as its users say it: the description's first word ("timm")."""
        return self.description.split(" ")[0]

    def stored(self, tree: Tree) -> dict[str, Any]:
        """The family's counters as stored, dotted key -> value (only those present)."""
        out: dict[str, Any] = {}
        for path in self.counter_keys:
            value = dig(tree, *path)
            if isinstance(value, (int, float, str)):   # a counter as stored; other values are not one
                out[".".join(path)] = value
        return out


def dig(tree: Any, *keys: str) -> Any:
    """``tree[k1][k2]...``, or None where a level is missing or not a dict."""
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def position_args(epochs: int, within: int) -> list[str]:
    """fix-epoch's arguments for `epochs` whole epochs done and `within` steps into the next."""
    return ["--epoch", str(epochs), "--complete"] if within == 0 else ["--epoch", str(epochs + 1),
                                                                      "--step", str(within)]


def whole_epochs_only(step: int, why: str) -> None:
    if step:
        raise UnrepresentableProgress(f"cannot record a position inside an epoch: {why}; use --complete")


def has(*keys: str) -> Callable[[Tree], bool]:
    return lambda t: all(k in t for k in keys)


def has_any(*keys: str) -> Callable[[Tree], bool]:
    return lambda t: any(k in t for k in keys)


def ckptkit_layout(tree: Tree) -> Any:
    """The layout ckptkit's checkpoint manager names in its marker (absent for systems' own files)."""
    marker = tree.get("ckptkit")
    return marker.get("layout") if isinstance(marker, dict) else None


def optimizer_never_stepped(optimizer: Any) -> bool:
    """An optimizer state dict with parameter groups but no per-parameter state: Adam, AdamW, SGD
    with momentum... create that state at their first `step()`, so it never stepped."""
    return S.is_optimizer_state(optimizer) and not optimizer["state"] and any(
        isinstance(g, dict) and g.get("params") for g in optimizer["param_groups"])


def optimizer_step(optimizer: Any, limit: int | None = None) -> int | None:
    """How many steps an Adam-style optimizer took: the largest per-parameter `step`, or None.

    The one rule ckptkit uses (validation, fix-epoch): parameters frozen for a while or added
    later have smaller counts, so the largest is the optimizer's own. A step that cannot be read
    (truncated bytes) is an integrity finding elsewhere, not a counter here. `limit`: look at the
    first entries with a step only (`inspect` reads one 4-byte scalar, not one per parameter).
    """
    state = optimizer.get("state") if isinstance(optimizer, dict) else None
    steps: list[int] = []
    for entry in state.values() if isinstance(state, dict) else []:
        value = entry.get("step") if isinstance(entry, dict) else None
        if isinstance(value, TensorRef):
            try:
                value = value.scalar_value()
            except (CkptkitError, OSError, ValueError):
                value = None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
            steps.append(int(value))
            if limit is not None and len(steps) >= limit:
                break
    return max(steps) if steps else None
