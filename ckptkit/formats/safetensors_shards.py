"""A folder of safetensors shards and their index, with nothing else to say what it is.

`model-00001-of-0000N.safetensors` ... + `model.safetensors.index.json` (`{"metadata":
{"total_size": N}, "weight_map": {tensor name: shard file}}`), as `ckptkit convert
--max-shard-size` writes them and as Hugging Face shards weights. With a `config.json` beside
them it is a `save_pretrained` folder (that format claims it first); alone it is this one. Each
shard ckptkit wrote carries the same `__metadata__` (the source's progress, config and layout,
see `ckptkit.conversion.plan`), which is taken from the first shard, so converting the folder
back to `.pth` restores the source's layout as for a single `.safetensors` file.
"""
from __future__ import annotations

from pathlib import Path

from ckptkit.core.checkpoint import Checkpoint, Progress, Severity
from ckptkit.formats.folder import FolderReading, member_names

INDEX = "model.safetensors.index.json"


class SafetensorsShardsFormat:
    name = "safetensors-shards"
    description = "sharded safetensors weights (model-0000i-of-0000N.safetensors + model.safetensors.index.json)"

    def sniff(self, path: Path, head: bytes) -> bool:
        return INDEX in member_names(path)

    def read(self, path: Path) -> Checkpoint:
        names = member_names(path)
        reading = FolderReading(path)
        model = reading.read_weights(names)
        ckpt = reading.finish(self.name, "state-dict",
                              Progress(notes=["sharded weights only: no training progress is stored in them"]))
        ckpt.model = model
        ckpt.metadata.update(_first_shard_metadata(reading))
        if not model and not any(f.severity is Severity.ERROR for f in ckpt.findings):
            reading.add_finding("folder.missing-weights", Severity.ERROR, "", "no model weights found")
        return ckpt


def _first_shard_metadata(reading: FolderReading) -> dict[str, str]:
    """The first shard's __metadata__, as its reading found it (each file is read once)."""
    shards = sorted(reading.shards)
    # A shard that is missing or could not be read has no metadata; its damage is already a finding.
    return dict(reading.metadata.get(shards[0], {})) if shards else {}
