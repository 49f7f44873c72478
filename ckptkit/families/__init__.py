"""Layout families of single-file checkpoints: one module per training system's layout.

Each module (`llamarec`, `fashion`, `enstack`, `experiment`, `lightning`, `nanogpt`, `timm`,
`vision_refs`, `ultralytics`, `generic`) is the one home of its system's conventions (see ``base.Family`` and
docs/families.md): recognition, counters -> `Progress`, the inverse `fix-epoch` writes, file
and folder names, traps, and what the system's own resume does. Sections (model, optimizer,
...) are found the same way for all of them (`ckptkit.views.sections`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Checkpoint
from ckptkit.families.base import (
    CounterValues,
    Family,
    FamilyNames,
    KeyPath,
    TrapHit,
    Tree,
    UnrepresentableProgress,
    dig,
    optimizer_step,
)
from ckptkit.families.enstack import ENSTACK
from ckptkit.families.experiment import EXPERIMENT
from ckptkit.families.fashion import FASHION
from ckptkit.families.fashion import NAME as RETRIEVAL_NAME
from ckptkit.families.generic import GENERIC, has_nested_counters
from ckptkit.families.generic import stored as generic_stored
from ckptkit.families.lightning import LIGHTNING
from ckptkit.families.llamarec import LLAMAREC
from ckptkit.families.nanogpt import NANOGPT
from ckptkit.families.timm import TIMM
from ckptkit.families.ultralytics import ULTRALYTICS
from ckptkit.families.vision_refs import VISION_REFS
from ckptkit.formats.base import register_tree_interpreter, security_findings
from ckptkit.storage.safe_pickle import GlobalRef, PickledObject
from ckptkit.views import sections as S

__all__ = ["FAMILIES", "GENERIC", "RETRIEVAL_NAME", "CounterValues", "Family", "FamilyNames", "KeyPath",
           "TrapHit", "Tree", "UnrepresentableProgress", "build_checkpoint", "dig", "family_named",
           "counters_tree", "interpret", "system_folder", "leftover_copy", "between_saves", "optimizer_step",
           "recognise"]

# Order matters: the first family whose `matches` accepts a tree wins.
FAMILIES: list[Family] = [LIGHTNING, NANOGPT, TIMM, VISION_REFS, ULTRALYTICS, EXPERIMENT, FASHION, ENSTACK,
                           LLAMAREC]


def recognise(tree: Any) -> Family | None:
    """The family of a decoded tree, or None for a bare state dict / non-dict."""
    if not isinstance(tree, dict) or all(isinstance(k, str) is False for k in tree):
        return None
    for family in FAMILIES:
        if family.matches(tree):
            return family
    return GENERIC


def family_named(name: str) -> Family | None:
    """The family called `name` (as stored in `Checkpoint.family`), or None."""
    return next((f for f in [*FAMILIES, GENERIC] if f.name == name), None)


def interpret(family: Family, tree: Tree, path: Path) -> Any:
    """The family's reading of a tree: `Progress` with the stored counters and the resume prediction."""
    progress = family.progress(tree, path)
    progress.stored = generic_stored(tree) if family is GENERIC else family.stored(tree)
    if family.resume is not None:
        progress.resume = family.resume(tree, path, progress)
    return progress


def leftover_copy(name: str) -> tuple[str, str, str] | None:
    """(kind, system, the name it belongs to) when `name` is a family's temporary or backup copy,
    e.g. ("backup", "EnStack", "last_checkpoint") for ".backup_last_checkpoint"."""
    for family in FAMILIES:
        for kind, pattern in (("temporary", family.names.temporary), ("backup", family.names.backup)):
            m = pattern.match(name) if pattern is not None else None
            if m:
                copy_of = family.names.copy_of
                return kind, family.system, copy_of(m) if copy_of else m.group("name")
    return None


def between_saves(name: str) -> bool:
    """Whether `name` is a family's save made between two saves of its recent file (timm's
    recovery-E-U.pth.tar), which may be further than that file without it being stale."""
    return any(f.names.between is not None and f.names.between.match(name) for f in FAMILIES)


def system_folder(ckpt: Checkpoint) -> bool:
    """A folder as the training system itself saves it (EnStack's model + training_state.pth),
    checked like the state file inside it; not a format's folder whose parts live elsewhere (DCP)."""
    family, found = family_named(ckpt.family), counters_tree(ckpt)
    return (ckpt.path.is_dir() and family is not None and found is not None
            and found[0] is not None and found[0] == family.names.state_file)


def counters_tree(ckpt: Checkpoint) -> tuple[str | None, Tree] | None:
    """Where the family's counters are: (None, the file's tree), or for a folder the member file
    whose tree the family was recognised from, e.g. ("training_state.pth", {...}). A folder and
    the file inside it are checked on the same tree, so they get the same verdict."""
    family = family_named(ckpt.family)
    if family is None or not isinstance(ckpt.tree, dict):
        return None
    if not ckpt.path.is_dir():
        return None, ckpt.tree
    for member, sub in ckpt.tree.items():
        if isinstance(sub, dict) and recognise(sub) is family:
            return str(member), sub
    return None


def build_checkpoint(path: Path, fmt: str, tree: Any, globals_: list[GlobalRef]) -> Checkpoint:
    """A Checkpoint for a single-file format's decoded tree: family, sections, progress, findings."""
    ckpt = Checkpoint(path=path, format=fmt, family="unknown", size_bytes=path.stat().st_size,
                      tree=tree, files=[path])
    family = recognise(tree)
    allowed = (family.system, family.safe_globals) if family is not None and family.safe_globals else None
    ckpt.findings.extend(security_findings(path, path.name, globals_, allowed))
    bare = None if has_nested_counters(tree) else S.flatten_state_dict(tree, strict=True)
    if bare is not None:
        ckpt.family, ckpt.model = "state-dict", bare
        ckpt.sources["model"] = "(top level)"
        return ckpt
    if S.is_optimizer_state(tree):
        ckpt.family, ckpt.optimizer = "optimizer-state", tree
        ckpt.sources["optimizer"] = "(top level)"
        return ckpt
    if family is None:
        ckpt.family = "pickled-object" if isinstance(tree, PickledObject) else "unknown"
        module = S.module_state_dict(tree)
        if module is not None:           # torch.save(model): the model is its state dict
            ckpt.model, ckpt.sources["model"] = module, f"a pickled {tree.qualified_name}"
        elif isinstance(tree, PickledObject):
            ckpt.config = S.config_fields(tree)
        return ckpt
    ckpt.family = family.name
    _fill_sections(ckpt, tree, family)
    ckpt.progress = interpret(family, tree, path)
    return ckpt


register_tree_interpreter(build_checkpoint)


def _fill_sections(ckpt: Checkpoint, tree: Tree, family: Family) -> None:
    used = {path[0] for path in family.counter_keys if len(path) == 1}    # its counters are no metrics
    for model_key in (*family.model_keys, *S.MODEL_KEYS):
        value = tree.get(model_key)
        model = S.flatten_state_dict(value) or S.module_state_dict(value)
        if model is not None:
            ckpt.model, ckpt.sources["model"] = model, model_key
            used.add(model_key)
            break
    for attr, keys in (("optimizer", S.OPTIMIZER_KEYS), ("scheduler", S.SCHEDULER_KEYS),
                       ("scaler", S.SCALER_KEYS), ("rng", S.RNG_KEYS)):
        key, value = S.first_present(tree, keys)
        if key is not None and key not in used:
            setattr(ckpt, attr, S.unwrap_single(value))
            ckpt.sources[attr] = key
            used.add(key)
    key, value = S.first_present(tree, S.CONFIG_KEYS)
    if key is not None and key not in used:
        ckpt.config, ckpt.sources["config"] = S.config_fields(value), key
        used.add(key)
    for key, value in tree.items():
        if key in used or key in S.COUNTER_KEYS or key == "data_position":
            continue
        if S.is_number(value):
            ckpt.metrics[key] = value
        elif S.is_history(value):
            ckpt.histories[key] = value
        else:
            ckpt.extra[key] = value


