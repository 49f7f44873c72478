"""`save_pretrained` model folders, alone or with a `training_state.pth` beside them (EnStack).

`model.save_pretrained(dir)` writes `config.json` + weights (`model.safetensors`,
`pytorch_model.bin`, or shards with a `*.index.json`); peft writes `adapter_config.json` +
`adapter_model.*`. Such a folder alone is a model, not a resumable checkpoint: it has no
progress. EnStack's trainer adds `training_state.pth` (epoch, step where 0 marks the end of an
epoch, total_batches, best metrics, optimizer and scheduler): that file is read like any
single-file checkpoint, so its progress is the `training-state` family's.
"""
from __future__ import annotations

from pathlib import Path

from ckptkit.core.checkpoint import Checkpoint, Progress, Severity
from ckptkit.formats.folder import FolderReading, has_weights, member_names, take_training_state

TRAINING_STATE = "training_state.pth"
CONFIG_FILES = ("config.json", "adapter_config.json")


class SavePretrainedFormat:
    name = "save-pretrained"
    description = "save_pretrained model folder (config.json + weights), optionally with training_state.pth"

    def sniff(self, path: Path, head: bytes) -> bool:
        names = member_names(path)
        return has_weights(names) and (any(n in names for n in CONFIG_FILES) or TRAINING_STATE in names)

    def read(self, path: Path) -> Checkpoint:
        names = member_names(path)
        reading = FolderReading(path)
        model = reading.read_weights(names)
        config = None
        for name in CONFIG_FILES:
            if name in names:
                config = reading.read_json(name, "model config" if name == "config.json" else "LoRA adapter config")
                reading.sources["config"] = name
                break
        state = reading.open_member(TRAINING_STATE, "training state") if TRAINING_STATE in names else None
        family = "lora-adapter" if "adapter_config.json" in names else "hf-model"
        progress = Progress(notes=["a model folder without training state: a resume starts training from "
                                   "step 0 with these weights"])
        if state is not None:
            family, progress = state.family, state.progress
        ckpt = reading.finish(self.name, family, progress)
        ckpt.model, ckpt.config = model, config
        if state is not None:
            take_training_state(ckpt, state, TRAINING_STATE)
        elif TRAINING_STATE in names:
            ckpt.progress = Progress(notes=["training_state.pth is unreadable: a resume would restart at epoch 0"])
        if not model and not any(f.severity is Severity.ERROR for f in ckpt.findings):
            reading.add_finding("folder.missing-weights", Severity.ERROR, "", "no model weights found")
        return ckpt
