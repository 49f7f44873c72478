"""A safetensors file ckptkit wrote from a training file -> that file's dict layout again (.pth).

`ckptkit convert run.pth model.safetensors --weights-only` keeps the source's progress, config
and metrics as JSON in `__metadata__`, and its layout (family, model key, config key) under
"ckptkit.layout" (keys in `ckptkit.conversion.plan`). Converting back to .pth puts them where the
source family's reader finds them: the model under its key, the config as a plain dict, each
metric as a top-level number, and the progress as the family's own counters (`Family.record`,
`Family.plain_counters`), checked by reading the tree back with that family's reader before
anything is written. Progress the family's counters cannot say (a position inside an epoch in
a layout that stores whole epochs, or no family recorded) is kept whole under PROGRESS_KEY as a
plain dict instead, and the conversion says so. Every value is one torch.load(weights_only=True)
reads.
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ckptkit.conversion.metadata_keys import (
    META_ALIASES,
    META_CONFIG,
    META_DTYPE,
    META_LAYOUT,
    META_METRICS,
    META_PROGRESS,
    META_SOURCE_FORMAT,
)
from ckptkit.core.checkpoint import Checkpoint, TensorRef
from ckptkit.families import Family, UnrepresentableProgress, family_named, recognise

PROGRESS_KEY = "ckptkit_progress"   # the source's Progress.to_json(), when no family counter can hold it
# The Progress fields a restored tree must read back unchanged.
COMPARED = ("epochs_completed", "step_in_epoch", "steps_per_epoch", "global_step", "epoch_complete", "max_steps")
OWN_KEYS = frozenset({"format", META_SOURCE_FORMAT, META_PROGRESS, META_CONFIG, META_METRICS, META_ALIASES,
                      META_DTYPE, META_LAYOUT})
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


@dataclass
class Restoration:
    tree: Any                        # the model state dict alone when there is nothing to restore
    notes: list[str] = field(default_factory=list)


def restored_tree(ckpt: Checkpoint, model: OrderedDict[str, TensorRef]) -> Any:
    return restore(ckpt, model).tree


def restore(ckpt: Checkpoint, model: OrderedDict[str, TensorRef]) -> Restoration:
    """The tree a .pth written from `ckpt` (a safetensors file) holds; see the module docstring."""
    meta = ckpt.metadata
    layout, progress = _json(meta, META_LAYOUT), _json(meta, META_PROGRESS)
    config, metrics = _json(meta, META_CONFIG), _json(meta, META_METRICS)
    layout = layout if isinstance(layout, dict) else {}
    metrics = metrics if isinstance(metrics, dict) else {}
    progress = progress if isinstance(progress, dict) and _known(progress) else None
    foreign = sorted(k for k in meta if k not in OWN_KEYS)
    notes = [f"__metadata__ keys not carried over (not ckptkit's): {', '.join(foreign)}"] if foreign else []
    if not (layout or progress or config is not None or metrics):
        return Restoration(model, notes)
    tree: dict[str, Any] = OrderedDict()
    tree[_key(layout.get("model"), "model_state_dict")] = model
    if config is not None:
        tree[_key(layout.get("config"), "config")] = config
    for name, value in metrics.items():
        number = _number(value)
        if number is not None and str(name) not in tree:
            tree[str(name)] = number
    restored = [k for k in tree if k != _key(layout.get("model"), "model_state_dict")]
    if progress is not None:
        family = family_named(str(layout.get("family")))
        counters = _counters(family, tree, progress)
        if family is not None and counters is not None and _reads_back(ckpt, family, {**tree, **counters}, progress):
            tree.update(counters)
            restored.append(f"progress as the {family.name} layout's counters ({_shown(counters)})")
        else:
            tree[PROGRESS_KEY] = progress
            why = (f"the {family.name} layout's counters cannot say '{progress.get('summary')}'" if family
                   else "the source layout is not recorded")
            restored.append(f"progress under '{PROGRESS_KEY}' ({why}; ckptkit's readers do not read it back)")
    notes.insert(0, f"restored from the safetensors __metadata__: {', '.join(restored)}")
    return Restoration(tree, notes)


def _counters(family: Family | None, tree: dict[str, Any], progress: dict[str, Any]) -> dict[str, Any] | None:
    """Top-level counter keys and values that make `family` read `progress`, or None."""
    if family is None:
        return None
    values: dict[str, Any] = {}
    epochs = progress.get("epochs_completed")
    if isinstance(epochs, int):
        if family.record is None:
            return None
        try:
            recorded = family.record(tree, epochs, progress.get("step_in_epoch") or 0)
        except UnrepresentableProgress:
            return None
        if any(len(path) != 1 for path in recorded):
            return None   # nested counters (data_position, Lightning loops) need structure not kept
        values.update((path[0], value) for path, value in recorded.items())
    for name, key in family.plain_counters:
        if progress.get(name) is not None:
            values[key] = progress[name]
    return values


def _reads_back(ckpt: Checkpoint, family: Family, tree: dict[str, Any], progress: dict[str, Any]) -> bool:
    found = recognise(tree)
    if found is None or found.name != family.name:
        return False
    after = family.progress(tree, ckpt.path).to_json()
    return all(after[name] == progress.get(name) for name in COMPARED)


def _json(meta: dict[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key]) if key in meta else None
    except json.JSONDecodeError:
        return None


def _known(progress: dict[str, Any]) -> bool:
    return isinstance(progress.get("epochs_completed"), int) or isinstance(progress.get("global_step"), int)


def _key(value: Any, default: str) -> str:
    """The source's key, when it was a plain top-level key (not "(top level)" or a nested path)."""
    return value if isinstance(value, str) and _PLAIN_KEY.fullmatch(value) else default


def _number(value: Any) -> int | float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if value in ("nan", "inf", "-inf"):   # how to_jsonable spells non-finite floats
        return float(value)
    return None


def _shown(counters: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in counters.items())
