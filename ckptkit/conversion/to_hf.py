"""A single checkpoint -> a Hugging Face style folder (`--to hf`), the inverse of packing one.

Members written, as transformers' Trainer lays out `checkpoint-N/`: the weights as
`model.safetensors` (`adapter_model.safetensors` when an `adapter_config.json` comes along; with
--max-shard-size, `model-0000i-of-0000N.safetensors` shards and `model.safetensors.index.json`),
`optimizer.pt`, `scheduler.pt`, `scaler.pt` and `rng_state.pth` (or `rng_state_{rank}.pth`) from
the matching sections (unless --weights-only; numpy arrays in the RNG state as plain lists), and
every JSON member the source carries (`config.json`, `trainer_state.json`, `adapter_config.json`,
... as packed by `ckptkit convert FOLDER file.pth`). Each file is read
back and compared like any other conversion output before the folder is put in place.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptkit.checkpoint import Checkpoint
from ckptkit.conversion.plan import (TensorPlan, dropped_sections, json_members, model_tensors,
                                     not_rewritable, plan_tensors, rekeyed, safetensors_metadata,
                                     with_plain_arrays)
from ckptkit.conversion.shards import ShardLayout, shard_layout, verify_shards, write_shards
from ckptkit.conversion.verify import verify_index, verify_safetensors, verify_torch_file
from ckptkit.dtypes import DType
from ckptkit.errors import UnsupportedFeatureError
from ckptkit.formats.hf_trainer import RNG_FILE

SECTION_FILES = (("optimizer", "optimizer.pt"), ("scheduler", "scheduler.pt"), ("scaler", "scaler.pt"))


@dataclass
class FolderPlan:
    weights_name: str
    weights: TensorPlan
    metadata: dict[str, str]
    sections: dict[str, Any] = field(default_factory=dict)     # file name -> tree (torch.save)
    documents: dict[str, Any] = field(default_factory=dict)    # file name -> JSON value
    dropped: list[str] = field(default_factory=list)
    shards: ShardLayout | None = None                          # --max-shard-size: weights in shards
    verified: int = 0


def plan_folder(ckpt: Checkpoint, weights_only: bool, select: str | None, to: DType | None,
                max_shard_size: int | None = None) -> FolderPlan:
    documents = json_members(ckpt)
    weights = plan_tensors(model_tensors(ckpt, select), to)
    name = "adapter_model.safetensors" if "adapter_config.json" in documents else "model.safetensors"
    plan = FolderPlan(name, weights, safetensors_metadata(ckpt, weights.aliases, to), documents=documents)
    if max_shard_size:
        if name.startswith("adapter"):   # PEFT loads an adapter from one file only
            raise UnsupportedFeatureError(ckpt.path, "--max-shard-size: an adapter (adapter_config.json) is "
                                          "saved as one adapter_model.safetensors; leave the option out")
        plan.shards = shard_layout(weights, max_shard_size)
    if weights_only or select is not None:
        plan.dropped = dropped_sections(ckpt)
        return plan
    for section, file in SECTION_FILES:
        value = getattr(ckpt, section)
        if value is not None:
            plan.sections[file] = rekeyed(value, set(), None, renumber=True)
    if ckpt.rng is not None:
        rng = with_plain_arrays(ckpt.rng)
        why = not_rewritable(rng)
        if why:
            plan.dropped.append(f"rng ({ckpt.sources.get('rng', '?')}): {why}")
        else:
            plan.sections.update((file, rekeyed(tree, set(), None, renumber=True)) for file, tree in rng_files(rng))
    if not ckpt.path.is_dir() and isinstance(ckpt.tree, dict):
        used = {ckpt.sources.get(s) for s in ("model", "optimizer", "scheduler", "scaler", "rng")}
        rest = [str(k) for k in ckpt.tree if k not in used and not str(k).endswith(".json")]
        if rest and ckpt.sources.get("model") != "(top level)":
            plan.dropped.append(f"other keys ({', '.join(rest)}): an HF folder has no file for them")
    return plan


def rng_files(rng: Any) -> list[tuple[str, Any]]:
    """The RNG state as Trainer's member files: one `rng_state_{rank}.pth` per rank when the state
    came from such files (an HF folder packed by ckptkit keeps them by file name), else one
    `rng_state.pth` holding the section as it is."""
    if isinstance(rng, dict) and rng and all(isinstance(k, str) and RNG_FILE.fullmatch(k) for k in rng):
        return sorted(rng.items())
    return [("rng_state.pth", rng)]


def populate(plan: FolderPlan, folder: Path) -> None:
    from ckptkit.formats.safetensors_file import write_safetensors
    from ckptkit.formats.torch_zip import write_torch_zip

    if plan.shards is not None:
        write_shards(folder, plan.weights, plan.metadata, plan.shards)
    else:
        with open(folder / plan.weights_name, "xb") as f:
            write_safetensors(f, plan.weights.tensors, plan.metadata, plan.weights.casts)
    for file, tree in plan.sections.items():
        with open(folder / file, "xb") as f:
            write_torch_zip(f, tree)
    for file, value in plan.documents.items():
        (folder / file).write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def verify(plan: FolderPlan, folder: Path, shown_as: Path) -> None:
    if plan.shards is not None:
        plan.verified = verify_shards(folder, shown_as, plan.weights, plan.metadata, plan.shards)
    else:
        plan.verified = verify_safetensors(folder / plan.weights_name, shown_as / plan.weights_name,
                                           plan.weights.tensors, plan.metadata, plan.weights.casts)
    for file, tree in plan.sections.items():
        plan.verified += verify_torch_file(folder / file, shown_as / file, tree)
    for file, value in plan.documents.items():
        verify_index(folder / file, shown_as / file, value)
