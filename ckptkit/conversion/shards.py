"""Sharded safetensors as Hugging Face's save_pretrained writes them: `model-0000i-of-0000N.safetensors`
files and `model.safetensors.index.json` = {"metadata": {"total_size": N}, "weight_map": {name: file}}.

Used for `--max-shard-size` whether the output is a folder of shards alone or an HF checkpoint
folder (`--to hf`) with the training state beside them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptkit.conversion.plan import TensorPlan
from ckptkit.conversion.verify import verify_index, verify_safetensors
from ckptkit.formats.safetensors_file import write_safetensors

INDEX_NAME = "model.safetensors.index.json"


@dataclass
class ShardLayout:
    files: list[str]                 # shard file names, in order
    shards: list[list[str]]          # tensor names in each shard
    index: dict[str, Any]            # the index file's content

    @property
    def names(self) -> list[str]:
        return [*self.files, INDEX_NAME]


def shard_names(plan: TensorPlan, max_bytes: int) -> list[list[str]]:
    """Tensors in order, a new shard whenever the next would push one past `max_bytes` (a tensor
    larger than that gets a shard of its own), as Hugging Face's save_pretrained splits."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in plan.tensors.items():
        nbytes = t.numel * plan.casts.get(name, t.dtype).itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def shard_layout(plan: TensorPlan, max_bytes: int) -> ShardLayout:
    shards = shard_names(plan, max_bytes)
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    total = sum(t.numel * plan.casts.get(n, t.dtype).itemsize for n, t in plan.tensors.items())
    index = {"metadata": {"total_size": total},
             "weight_map": {name: file for file, names in zip(files, shards, strict=True) for name in names}}
    return ShardLayout(files, shards, index)


def write_shards(folder: Path, plan: TensorPlan, meta: dict[str, str], layout: ShardLayout) -> int:
    """Every shard and the index into `folder`; returns the shards' bytes."""

    written = 0
    for file, names in zip(layout.files, layout.shards, strict=True):   # one file per shard
        with open(folder / file, "xb") as f:
            written += write_safetensors(f, {n: plan.tensors[n] for n in names}, meta, plan.casts)
    (folder / INDEX_NAME).write_text(json.dumps(layout.index, indent=2) + "\n", encoding="utf-8")
    return written


def verify_shards(folder: Path, shown_as: Path, plan: TensorPlan, meta: dict[str, str], layout: ShardLayout) -> int:
    """Every shard's tensors against the source, and the index; returns the tensors checked."""
    checked = 0
    for file, names in zip(layout.files, layout.shards, strict=True):   # one file per shard
        subset = {n: plan.tensors[n] for n in names}
        checked += verify_safetensors(folder / file, shown_as / file, subset, meta, plan.casts)
    verify_index(folder / INDEX_NAME, shown_as / INDEX_NAME, layout.index)
    return checked
