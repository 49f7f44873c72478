"""A single checkpoint -> a Hugging Face style folder (`--to hf`), the inverse of packing one.

Members written, as transformers' Trainer lays out `checkpoint-N/`: the weights as
`model.safetensors` (`adapter_model.safetensors` when an `adapter_config.json` comes along; with
--max-shard-size, `model-0000i-of-0000N.safetensors` shards and `model.safetensors.index.json`),
`optimizer.pt`, `scheduler.pt`, `scaler.pt` from the matching sections and `rng_state.pth` (or
`rng_state_{rank}.pth`) in the layout Trainer restores (`ckptkit.conversion.hf_rng`) (unless
--weights-only), and
every JSON member the source carries (`config.json`, `trainer_state.json`, `adapter_config.json`,
... as packed by `ckptkit convert FOLDER file.pth`); a source without `trainer_state.json` whose
progress has a global step gets one built from it (`ckptkit.conversion.hf_state`). Each file is read
back and compared like any other conversion output before the folder is put in place.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptkit.conversion.hf_rng import TRAINING_ARGS_NOTE, hf_rng_files
from ckptkit.conversion.hf_state import trainer_state_from_progress
from ckptkit.conversion.plan import (
    TensorPlan,
    dropped_sections,
    json_members,
    model_tensors,
    plan_tensors,
    rekeyed,
    safetensors_metadata,
)
from ckptkit.conversion.shards import ShardLayout, shard_layout, verify_shards, write_shards
from ckptkit.conversion.verify import verify_index, verify_safetensors, verify_torch_file
from ckptkit.core.checkpoint import Checkpoint, iter_tensors
from ckptkit.core.dtypes import DType
from ckptkit.core.errors import UnsupportedFeatureError
from ckptkit.formats.hf_trainer import TRAINER_STATE
from ckptkit.formats.safetensors_file import write_safetensors
from ckptkit.formats.torch_zip import write_torch_zip

# transformers 5.23 Trainer.train(resume_from_checkpoint=...) opens this file unconditionally.
NO_TRAINER_STATE_NOTE = ("no trainer_state.json written (the source has none, and its progress has no global "
                         "step to build one from): transformers' Trainer.train(resume_from_checkpoint=...) opens "
                         "it unconditionally, so a resume from this folder fails until one is added")
SECTION_FILES = (("optimizer", "optimizer.pt"), ("scheduler", "scheduler.pt"), ("scaler", "scaler.pt"))


@dataclass
class FolderPlan:
    weights_name: str
    weights: TensorPlan
    metadata: dict[str, str]
    sections: dict[str, Any] = field(default_factory=dict)     # file name -> tree (torch.save)
    documents: dict[str, Any] = field(default_factory=dict)    # file name -> JSON value
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shards: ShardLayout | None = None                          # --max-shard-size: weights in shards
    verified: int = 0

    def tensors_by_file(self) -> dict[str, int]:
        """Tensors written, per file: the model's and every section's (the verified count covers all)."""
        weights = (self.weights_name if self.shards is None
                   else self.weights_name.replace(".safetensors", "-*.safetensors"))
        counts = {weights: len(self.weights.tensors)}
        counts.update((file, sum(1 for _ in iter_tensors(tree))) for file, tree in self.sections.items())
        return counts


def plan_folder(ckpt: Checkpoint, weights_only: bool, select: str | None, to: DType | None,
                max_shard_size: int | None = None, output_name: str | None = None) -> FolderPlan:
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
        rng = hf_rng_files(ckpt.rng, ckpt.sources.get("rng", "?"))
        plan.sections.update((file, rekeyed(tree, set(), None, renumber=True)) for file, tree in rng.files)
        plan.dropped += rng.dropped
        plan.notes += rng.notes
    plan.notes.append(TRAINING_ARGS_NOTE)
    carried: set[str] = set()
    if TRAINER_STATE not in documents:
        state = trainer_state_from_progress(ckpt, output_name)
        carried = state.carried
        if state.document is None:
            plan.notes.append(NO_TRAINER_STATE_NOTE)
        else:
            plan.documents[TRAINER_STATE] = state.document
        plan.notes += state.notes
    if not ckpt.path.is_dir() and isinstance(ckpt.tree, dict):
        used = {ckpt.sources.get(s) for s in ("model", "optimizer", "scheduler", "scaler", "rng")}
        rest = [str(k) for k in ckpt.tree if k not in used and k not in carried and not str(k).endswith(".json")]
        if rest and ckpt.sources.get("model") != "(top level)":
            plan.dropped.append(f"other keys ({', '.join(rest)}): an HF folder has no file for them")
    return plan


def populate(plan: FolderPlan, folder: Path) -> None:

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
