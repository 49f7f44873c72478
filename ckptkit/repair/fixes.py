"""The safe automatic fixes `ckptkit repair` applies, each named by the finding code it answers.

A fix looks at an opened single-file checkpoint and returns the changes it would make (empty
when it does not apply), plus anything it saw but will not change. The codes are the ones the
validator's findings use (`ckptkit.validation`), so `validate` can name `repair --fix CODE`.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ckptkit.core.checkpoint import Checkpoint, TensorRef
from ckptkit.families import family_named
from ckptkit.formats.base import weights_only_command
from ckptkit.repair.changes import Change, KeyPath, plan_sets
from ckptkit.storage.safe_pickle import PickledObject
from ckptkit.views import sections as S

WRAPPER_PREFIXES = ("module.", "_orig_mod.")   # DistributedDataParallel / DataParallel, torch.compile
EPOCH_IN_NAME = re.compile(r"epoch[_=-]?(\d+)", re.IGNORECASE)
PER_EPOCH_HISTORIES = ("train_losses", "val_recalls")   # the fashion recommender: one entry per epoch


@dataclass
class FixPlan:
    changes: list[Change] = field(default_factory=list)
    cannot_fix: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Fix:
    code: str
    description: str
    plan: Callable[[Checkpoint], FixPlan]


def strip_wrapper_prefixes(ckpt: Checkpoint) -> FixPlan:
    """`compat.module-prefix`: model keys saved through DDP or torch.compile carry a wrapper prefix."""
    source = ckpt.sources.get("model")
    holder_path: KeyPath = () if source == "(top level)" else (source,)
    # a dict's key, or the file itself; not a pickled module's state dict, which is its own objects
    holder = ckpt.tree if source == "(top level)" else ckpt.tree.get(source) if isinstance(ckpt.tree, dict) else None
    out = FixPlan()
    if not isinstance(holder, dict) or not holder:
        return out
    renames = {k: _stripped(k) for k in holder if isinstance(k, str)}
    renames = {k: v for k, v in renames.items() if v != k}
    if not renames:
        return out
    if len(renames) != len(holder):
        out.cannot_fix.append(f"only {len(renames)} of {len(holder)} keys under {source} carry a wrapper "
                              "prefix: that is not how DDP or torch.compile save, so ckptkit leaves them")
        return out
    if len(set(renames.values())) != len(renames):
        out.cannot_fix.append(f"stripping the prefixes under {source} would make two keys equal; left as is")
        return out
    name = ckpt.path.name
    out.changes = [Change(name, holder_path, old, new, kind="rename") for old, new in renames.items()]
    out.notes.append(f"{len(renames)} model keys under {source} lose their wrapper prefix "
                     f"(e.g. {next(iter(renames))} -> {next(iter(renames.values()))}); optimizer state is "
                     "keyed by parameter index and is unaffected")
    return out


def _stripped(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def restore_missing_epoch(ckpt: Checkpoint) -> FixPlan:
    """`counters.missing-epoch`: an epoch counter from the file name or a per-epoch history."""
    out = FixPlan()
    family = family_named(ckpt.family)
    if ckpt.progress.known or family is None or family.record is None or not isinstance(ckpt.tree, dict):
        return out
    if ckpt.optimizer is None and not family.epoch_histories:
        return out      # weights or RNG state alone: no training position to restore (as validate says)
    evidence: dict[str, int] = {}
    m = ((family.name_pattern.search(ckpt.path.name) if family.name_pattern else None)
         or EPOCH_IN_NAME.search(ckpt.path.name))
    if m:
        evidence[f"the file name ({m.group(0)})"] = int(m.group(1))
    for key in PER_EPOCH_HISTORIES:
        if family.epoch_histories and S.is_history(ckpt.tree.get(key)):
            evidence[f"the length of '{key}' (one entry per epoch)"] = len(ckpt.tree[key])
    if not evidence:
        out.cannot_fix.append("no epoch counter, and neither the file name nor a per-epoch history says how "
                              "many epochs are done; set it with ckptkit fix-epoch PATH --epoch N --complete")
        return out
    if len(set(evidence.values())) != 1:
        said = "; ".join(f"{src} says {n}" for src, n in evidence.items())
        out.cannot_fix.append(f"the evidence for the epoch disagrees ({said}); set it with ckptkit fix-epoch")
        return out
    epochs = next(iter(evidence.values()))
    out.changes = plan_sets(ckpt.path.name, ckpt.tree, family.record(ckpt.tree, epochs, 0))
    out.notes.append(f"{epochs} epochs completed, from {' and '.join(evidence)}, stored in the {ckpt.family} "
                     "layout's convention")
    return out


def plain_config(ckpt: Checkpoint) -> FixPlan:
    """`security.pickled-class`: pickled objects (a config dataclass) become plain dicts of their fields."""
    out = FixPlan()
    if isinstance(ckpt.tree, PickledObject):
        if S.module_state_dict(ckpt.tree) is not None:
            out.cannot_fix.append(f"the file is a whole pickled torch.nn module ({ckpt.tree.qualified_name}, "
                                  "torch.save(model)), not a config: keep its weights as a state dict with "
                                  f"{weights_only_command(ckpt.path)}")
        else:
            out.cannot_fix.append(f"the whole file is one pickled {ckpt.tree.qualified_name} object, not a checkpoint "
                                  "holding a config: ckptkit leaves it (its fields show with ckptkit inspect)")
        return out
    for path, obj in _pickled_objects(ckpt.tree, ()):
        if S.module_state_dict(obj) is not None:
            out.cannot_fix.append(f"{'.'.join(map(str, path))} is a whole pickled torch.nn module "
                                  f"({obj.qualified_name}), not a config: keep its weights as a state dict with "
                                  f"{weights_only_command(ckpt.path)}")
            continue
        if obj.is_dangerous:
            out.cannot_fix.append(f"{'.'.join(map(str, path)) or '(top level)'} calls {obj.qualified_name}: "
                                  "that is not a config; keep the weights alone with "
                                  f"{weights_only_command(ckpt.path)}")
            continue
        if path and isinstance(path[-1], str) and path[-1].startswith("("):
            out.cannot_fix.append(f"{obj.qualified_name} inside a tuple at {'.'.join(map(str, path[:-1]))}: left as is")
            continue
        out.changes.append(Change(ckpt.path.name, path, obj, plain_value(obj)))
        out.notes.append(f"{'.'.join(map(str, path))}: {obj.qualified_name} -> plain dict of its "
                         f"{len(obj.fields())} fields; code that reads config.field must read config['field']")
    return out


def _pickled_objects(value: Any, path: KeyPath) -> list[tuple[KeyPath, PickledObject]]:
    if isinstance(value, PickledObject):
        return [(path, value)]
    found: list[tuple[KeyPath, PickledObject]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _pickled_objects(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _pickled_objects(v, path + (i,))
    elif isinstance(value, tuple):
        found += [(path + ("(tuple)",), o) for _, o in _pickled_objects(list(value), ())]
    return found


def plain_value(value: Any) -> Any:
    """A value with every pickled object replaced by its fields (an enum-like object by its value)."""
    if isinstance(value, PickledObject):
        if value.state is None and not value.items and len(value.args) == 1:
            return plain_value(value.args[0])
        return {str(k): plain_value(v) for k, v in value.fields().items()}
    if isinstance(value, dict):
        converted = type(value)() if type(value) is not dict else {}
        converted.update((k, plain_value(v)) for k, v in value.items())
        return converted
    if isinstance(value, list):
        return [plain_value(v) for v in value]
    if isinstance(value, tuple) and not isinstance(value, TensorRef):
        return tuple(plain_value(v) for v in value)
    return value


FIXES: dict[str, Fix] = {fix.code: fix for fix in (
    # validate names a DDP prefix compat.module-prefix and a torch.compile one compat.compile-prefix;
    # either fix strips both, as a compiled DDP model carries both.
    Fix("compat.module-prefix", "strip module. (DDP) / _orig_mod. (torch.compile) prefixes from the model's keys",
        strip_wrapper_prefixes),
    Fix("compat.compile-prefix", "strip _orig_mod. (torch.compile) / module. (DDP) prefixes from the model's keys",
        strip_wrapper_prefixes),
    Fix("counters.missing-epoch", "restore a missing epoch from the file name or the per-epoch history",
        restore_missing_epoch),
    Fix("security.pickled-class", "rewrite pickled config objects as plain dicts (loads with "
        "torch.load(weights_only=True))", plain_config),
)}
FOLDER_FIXES = {"counters.hf-step-mismatch": "set trainer_state.json global_step to the step the "
                                             "checkpoint-{step} folder is named for"}
ALL_CODES = (*FIXES, *FOLDER_FIXES)
