"""What a conversion writes: which tensors under which names, which are aliases, what is cast.

Planning reads only the checkpoint's index (no tensor bytes), and refuses up front whatever the
target cannot hold without losing something the user did not ask to drop.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field, replace
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
from ckptkit.conversion.restore import restored_tree
from ckptkit.core.checkpoint import Checkpoint, StorageRef, TensorRef, iter_tensors, make_tensor
from ckptkit.core.dtypes import DType, dtype_named
from ckptkit.core.errors import UnsupportedFeatureError
from ckptkit.families import family_named
from ckptkit.storage.safe_pickle import NumpyArray, PickledObject
from ckptkit.storage.tensor_bytes import AssembledStorage, DerivedStorage
from ckptkit.views.jsonable import to_jsonable

# Sources whose __metadata__ ckptkit reads back: one file, or shards that each carry the same.
SAFETENSORS_FORMATS = ("safetensors", "safetensors-shards")

DTYPE_CHOICES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp64": "float64"}
TRAINING_SECTIONS = ("optimizer", "scheduler", "scaler", "rng")
TORCH_FORMATS = ("torch-zip", "torch-legacy")


@dataclass
class TensorPlan:
    """The model tensors to write: `tensors` by name (in order), `aliases` {alias: written name},
    `casts` {name: dtype} for the floating tensors a --dtype changes."""

    tensors: OrderedDict[str, TensorRef]
    aliases: dict[str, str] = field(default_factory=dict)
    casts: dict[str, DType] = field(default_factory=dict)


def with_whole_tensors(ckpt: Checkpoint) -> Checkpoint:
    """`ckpt` with every tensor saved in several chunks (DCP shards) replaced by one whole tensor
    assembled from them as it is written; tensors saved whole are kept as they are."""
    # (one chunk at an offset past 0 is a part too: a DCP Hugging Face save missing a rank's file)
    split = {fqn: chunks for fqn, chunks in ckpt.chunks.items() if len(chunks) != 1 or any(chunks[0].offsets)}
    if not split:
        return ckpt
    memo: dict[int, TensorRef] = {}

    def whole(t: TensorRef) -> TensorRef:
        chunks = split.get(t.storage.key)
        if chunks is None:
            return t
        if id(t) not in memo:
            pieces = [(c.offsets, c.tensor) for c in chunks if c.tensor is not None]
            storage = AssembledStorage(t.storage.key, t.dtype, t.shape, ckpt.path, pieces)
            memo[id(t)] = make_tensor(t.dtype.name, t.shape, storage)
        return memo[id(t)]

    return replace(ckpt, tree=map_tensors(ckpt.tree, whole),
                   model=OrderedDict((n, whole(t)) for n, t in ckpt.model.items()),
                   **{s: map_tensors(getattr(ckpt, s), whole) for s in TRAINING_SECTIONS})


def target_dtype(spelling: str | None) -> DType | None:
    if spelling is None:
        return None
    try:
        return dtype_named(DTYPE_CHOICES.get(spelling, spelling))
    except KeyError:
        raise UnsupportedFeatureError(None, f"--dtype {spelling!r}: use one of {', '.join(DTYPE_CHOICES)}") from None


def model_tensors(ckpt: Checkpoint, select: str | None) -> OrderedDict[str, TensorRef]:
    """The source's model state dict (or its part under `select`), with recorded aliases restored."""
    if not ckpt.model:
        raise UnsupportedFeatureError(ckpt.path, f"no model state dict found (layout {ckpt.family!r}); "
                                      "nothing to convert")
    model = OrderedDict(ckpt.model)
    for alias, name in stored_aliases(ckpt).items():
        if name in model and alias not in model:
            model[alias] = model[name]
    if select is None:
        return model
    chosen = OrderedDict((n, t) for n, t in model.items() if n.startswith(select))
    if not chosen:
        tops = sorted({n.split(".")[0] for n in model})
        raise UnsupportedFeatureError(ckpt.path, f"--select {select!r} matches no model tensor (top-level "
                                      f"modules: {', '.join(tops[:12])})")
    return chosen


def stored_aliases(ckpt: Checkpoint) -> dict[str, str]:
    raw = ckpt.metadata.get(META_ALIASES) if ckpt.format in SAFETENSORS_FORMATS else None
    try:
        aliases = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in aliases.items()} if isinstance(aliases, dict) else {}


def plan_tensors(model: OrderedDict[str, TensorRef], to: DType | None) -> TensorPlan:
    """Tied tensors (same storage, same span, same layout) are written once; the rest in full."""
    plan = TensorPlan(OrderedDict())
    seen: dict[tuple[Any, ...], str] = {}
    for name, t in model.items():
        key = (id(t.storage), t.storage_offset, t.shape, t.stride, t.dtype.name)
        if t.numel > 0 and key in seen:
            plan.aliases[name] = seen[key]
            continue
        seen.setdefault(key, name)
        plan.tensors[name] = t
        if to is not None and t.dtype.is_floating and t.dtype != to:
            plan.casts[name] = to
    return plan


def dropped_sections(ckpt: Checkpoint) -> list[str]:
    """The training state a weights-only output leaves out, as 'section (key)'."""
    dropped = [f"{s} ({ckpt.sources.get(s, '?')})" for s in TRAINING_SECTIONS if getattr(ckpt, s) is not None]
    model_ids = {id(t) for t in ckpt.model.values()}
    other = [n for n, t in iter_tensors(ckpt.extra) if id(t) not in model_ids]
    if other:
        dropped.append(f"{len(other)} other tensors ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''})")
    if ckpt.histories:
        dropped.append(f"histories ({', '.join(ckpt.histories)})")
    return dropped


def safetensors_metadata(ckpt: Checkpoint, aliases: dict[str, str], to: DType | None) -> dict[str, str]:
    meta: dict[str, str] = {"format": "pt"}
    if ckpt.format in SAFETENSORS_FORMATS:
        meta.update({k: v for k, v in ckpt.metadata.items() if k != META_ALIASES})
    meta.setdefault(META_SOURCE_FORMAT, ckpt.format)
    if ckpt.progress.known:
        meta[META_PROGRESS] = _json(ckpt.progress.to_json())
    if ckpt.config is not None:
        meta[META_CONFIG] = _json(to_jsonable(ckpt.config))
    if ckpt.metrics:
        meta[META_METRICS] = _json(to_jsonable(ckpt.metrics))
    if aliases:
        meta[META_ALIASES] = _json(aliases)
    if to is not None:
        meta[META_DTYPE] = to.name
    if family_named(ckpt.family) is not None:   # a dict layout: .pth written back can take its shape again
        meta[META_LAYOUT] = _json({"family": ckpt.family, "model": ckpt.sources.get("model"),
                                   "config": ckpt.sources.get("config")})
    return meta


def torch_tree(ckpt: Checkpoint, weights_only: bool, select: str | None, to: DType | None,
               ) -> tuple[Any, Any, dict[str, str], list[str]]:
    """The tree a torch.save output holds, with casts applied storage by storage; the same tree
    before the casts (for verifying them independently); its aliases; and what of the source it
    leaves out.

    torch.save files and DCP folders keep their tree; torch.save files also keep their storage
    keys (records are copied byte for byte). Other sources get storages numbered "0", "1", ...
    as torch.save does, tied names sharing one storage again.
    """
    tree, dropped = source_tree(ckpt, weights_only, select)
    cast_ids = model_cast_ids(ckpt, to)
    renumber = ckpt.format not in TORCH_FORMATS   # safetensors names, DCP "fqn@[offsets]" keys
    return rekeyed(tree, cast_ids, to, renumber), tree, stored_aliases(ckpt), dropped


def rekeyed(tree: Any, cast_ids: set[int], to: DType | None, renumber: bool) -> Any:
    """`tree` with the storages in `cast_ids` cast to `to` and, with `renumber`, every storage
    keyed "0", "1", ... in order of first use; tensors sharing a storage still share it."""
    derived: dict[int, StorageRef] = {}

    def storage_for(t: TensorRef) -> StorageRef:
        s = t.storage
        if id(s) not in derived:
            dtype = to if id(s) in cast_ids else None
            key = str(len(derived)) if renumber else s.key
            # A cast reads the elements as the tensor's dtype (an untyped storage says uint8).
            derived[id(s)] = s if dtype is None and not renumber else DerivedStorage(s, key, dtype, t.dtype)
        found = derived[id(s)]
        if isinstance(found, DerivedStorage) and found.casts and t.dtype != found.elements:
            raise UnsupportedFeatureError(s.byte_range().path, f"storage {s.key!r} is read as {found.elements.name} "
                                          f"by one tensor and as {t.dtype.name} by another; --dtype cannot cast it")
        return found

    def mapped(t: TensorRef) -> TensorRef:
        s = storage_for(t)
        if not isinstance(s, DerivedStorage):   # neither cast nor renumbered: t.storage itself
            return t
        return replace(t, storage=s, dtype=s.dtype if s.casts else t.dtype)

    memo: dict[int, TensorRef] = {}
    return map_tensors(tree, lambda t: memo.setdefault(id(t), mapped(t)))


def source_tree(ckpt: Checkpoint, weights_only: bool, select: str | None) -> tuple[Any, list[str]]:
    """What of the source goes into a torch.save file, and what is left out (in words).

    Weights only: the bare model state dict. torch.save files and DCP folders: their own tree.
    Other sources that hold nothing but weights (safetensors, save_pretrained folders): the bare
    model state dict. Other folders (HF Trainer, accelerate):
    their sections under conventional keys, each member that torch.load(weights_only=True)
    could not read back (numpy arrays, pickled classes) left out and named.
    """
    if weights_only or select is not None:
        return model_tensors(ckpt, select), dropped_sections(ckpt)
    if any(f.code == "security.dangerous-global" for f in ckpt.findings):
        raise UnsupportedFeatureError(ckpt.path, "its pickle calls a dangerous global; a converted copy would "
                                      "keep it. Pass --weights-only to write the model tensors alone")
    if ckpt.format in TORCH_FORMATS or ckpt.format == "dcp":
        return ckpt.tree, []
    if ckpt.format in SAFETENSORS_FORMATS:
        return restored_tree(ckpt, model_tensors(ckpt, None)), []
    if not dropped_sections(ckpt):
        return model_tensors(ckpt, None), []
    return folder_tree(ckpt)


def folder_tree(ckpt: Checkpoint) -> tuple[dict[str, Any], list[str]]:
    """An HF Trainer or accelerate folder as one tree: its sections under conventional keys,
    each that torch.load(weights_only=True) could not read back left out and named."""
    tree: dict[str, Any] = OrderedDict(model=OrderedDict(ckpt.model))
    dropped: list[str] = []
    for key, section in FOLDER_SECTIONS:
        value = getattr(ckpt, section)
        if section == "progress":
            value = value.to_json() if value.known else None
        if value is None or (isinstance(value, dict) and not value):
            continue
        if section == "rng":
            value = with_plain_arrays(value)
        why = not_rewritable(value)
        if why:
            dropped.append(f"{section} ({ckpt.sources.get(section, '?')}): {why}")
        else:
            tree[key] = value
    # JSON members (trainer_state.json, adapter_config.json, ...) as they are, so that the folder
    # can be unpacked again (--to hf).
    tree.update((name, value) for name, value in json_members(ckpt).items())
    # Plain counters too, so that readers of the single file (ckptkit's families) see the progress.
    for key, value in (("global_step", ckpt.progress.global_step), ("epoch", ckpt.progress.epochs_completed)):
        if value is not None:
            tree[key] = value
    return tree, dropped


def json_members(ckpt: Checkpoint) -> dict[str, Any]:
    """A folder's JSON member files (config.json, trainer_state.json, adapter_config.json, ...),
    or a packed file's entries named like them: {file name: content}."""
    found: dict[str, Any] = {}
    if ckpt.path.is_dir():
        for file in sorted(ckpt.path.glob("*.json")):
            if file.name.endswith(".index.json"):
                continue   # shard indexes describe the files they sit beside, not the checkpoint
            try:
                found[file.name] = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue   # the folder reader reports damaged members; packing skips them
    elif isinstance(ckpt.tree, dict):
        found = {str(k): v for k, v in ckpt.tree.items() if str(k).endswith(".json") and isinstance(v, (dict, list))}
    return {k: v for k, v in found.items() if not not_rewritable(v)}


# Keys a packed folder's sections get in the single file (ckptkit's families recognise them).
FOLDER_SECTIONS = (("optimizer", "optimizer"), ("scheduler", "scheduler"), ("scaler", "scaler"),
                   ("rng_state", "rng"), ("config", "config"), ("progress", "progress"), ("metrics", "metrics"),
                   ("histories", "histories"), ("extra", "extra"))


def with_plain_arrays(value: Any) -> Any:
    """`value` with each 1-D numeric numpy array (an RNG's keys) as a plain list of numbers, which
    torch.load(weights_only=True) reads and numpy's set_state accepts; other values as they are."""
    if isinstance(value, NumpyArray):
        items = value.tolist()
        return value if items is None else items
    if isinstance(value, OrderedDict):
        return OrderedDict((k, with_plain_arrays(v)) for k, v in value.items())
    if isinstance(value, dict):
        return {k: with_plain_arrays(v) for k, v in value.items()}
    if isinstance(value, list):
        return [with_plain_arrays(v) for v in value]
    if isinstance(value, tuple):
        return tuple(with_plain_arrays(v) for v in value)
    return value


def not_rewritable(value: Any) -> str | None:
    """Why torch.load(weights_only=True) could not read `value` back once written, or None."""
    if isinstance(value, NumpyArray):
        return "holds numpy arrays, which ckptkit does not re-pickle"
    if isinstance(value, PickledObject):
        return f"a pickled {value.qualified_name}, which torch.load(weights_only=True) refuses"
    if isinstance(value, dict):
        return next((w for w in map(not_rewritable, value.values()) if w), None)
    if isinstance(value, (list, tuple)):
        return next((w for w in map(not_rewritable, value) if w), None)
    return None


def model_cast_ids(ckpt: Checkpoint, to: DType | None) -> set[int]:
    """ids of the model storages a --dtype casts (floating, not already `to`); optimizer
    moments and other sections keep their precision."""
    return {id(t.storage) for t in ckpt.model.values() if _casts(t, to)}


def _casts(t: TensorRef, to: DType | None) -> bool:
    return to is not None and t.dtype.is_floating and t.dtype != to


def map_leaves(tree: Any, fn: Any) -> Any:
    """`tree` with every leaf (anything but a dict, list or tuple) replaced by fn(leaf)."""
    if isinstance(tree, OrderedDict):
        return OrderedDict((k, map_leaves(v, fn)) for k, v in tree.items())
    if isinstance(tree, dict):
        return {k: map_leaves(v, fn) for k, v in tree.items()}
    if isinstance(tree, list):
        return [map_leaves(v, fn) for v in tree]
    if isinstance(tree, tuple):
        return tuple(map_leaves(v, fn) for v in tree)
    return fn(tree)


def map_tensors(tree: Any, fn: Any) -> Any:
    """`tree` with every tensor leaf replaced by fn(tensor); containers rebuilt, other values kept.

    Tensors inside pickled objects stay as they are; were one of them cast, the read-back
    verification would see its storage changed under it and reject the output.
    """
    return map_leaves(tree, lambda v: fn(v) if isinstance(v, TensorRef) else v)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=False)
