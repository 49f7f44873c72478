"""accelerate `Accelerator.save_state(dir)` folders.

Members (accelerate `save_accelerator_state`): `model.safetensors` (or `pytorch_model.bin`;
`model_1.*`... for further models), `optimizer.bin`, `scheduler.bin`, `scaler.pt`,
`random_states_{process}.pkl`, `custom_checkpoint_{i}.pkl` for objects registered with
`register_for_checkpointing`, `sampler.bin` / `dl_state_dict.bin`. Every `.bin`/`.pkl` is a
torch.save zip. accelerate itself stores no progress: `random_states_*.pkl["step"]` counts
micro-batches since the last epoch end; the optimizer's and scheduler's step counters count
updates; epochs are wherever the user put them (usually a registered object).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Checkpoint, Progress, TensorRef
from ckptkit.core.errors import NotACheckpointError
from ckptkit.formats.folder import FolderReading, member_names

RANDOM_STATES = re.compile(r"random_states_(\d+)\.pkl$")
CUSTOM = re.compile(r"custom_checkpoint_(\d+)\.pkl$")
SECTIONS = (("optimizer", re.compile(r"optimizer(_\d+)?\.bin$"), "optimizer"),
            ("scheduler", re.compile(r"scheduler(_\d+)?\.bin$"), "scheduler"),
            ("scaler", re.compile(r"scaler\.pt$"), "AMP scaler"))
MODEL = re.compile(r"(model|pytorch_model)(_\d+)?\.(safetensors|bin)$")


class AccelerateFormat:
    name = "accelerate"
    description = "accelerate save_state folder (model.safetensors, optimizer.bin, random_states_0.pkl)"

    def sniff(self, path: Path, head: bytes) -> bool:
        names = member_names(path)
        marker = any(RANDOM_STATES.match(n) or CUSTOM.match(n) for n in names)
        return marker or ("optimizer.bin" in names and any(MODEL.match(n) for n in names))

    def read(self, path: Path) -> Checkpoint:
        names = member_names(path)
        if not names:
            raise NotACheckpointError(path, "empty folder")
        reading = FolderReading(path)
        model: dict[str, TensorRef] = {}
        weights = sorted(((n, w) for n in names if (w := MODEL.match(n))), key=lambda nw: nw[0])
        for name, match in weights:
            member = reading.open_member(name, "model weights")
            if member is not None:
                prefix = "" if match.group(2) is None else f"{name.split('.')[0]}."
                model.update({prefix + k: t for k, t in (member.model or dict(member.tensors())).items()})
                reading.sources["model"] = ", ".join(filter(None, [reading.sources.get("model"), name]))
        sections: dict[str, Any] = {}
        for attr, pattern, role in SECTIONS:
            found = {n: reading.open_member(n, role) for n in sorted(names) if pattern.match(n)}
            trees = {n: m.tree for n, m in found.items() if m is not None}
            if trees:
                sections[attr] = next(iter(trees.values())) if len(trees) == 1 else trees
                reading.sources[attr] = ", ".join(trees)
        # accelerate reads them back through accelerate.utils.load, which allows numpy values
        rng = {n: m for n in sorted(names) if RANDOM_STATES.match(n)
               if (m := reading.open_member(n, "RNG state", numpy_allowed=True))}
        customs = {n: m for n in sorted(names) if CUSTOM.match(n)
                   if (m := reading.open_member(n, "registered object state"))}
        if rng:
            sections["rng"] = {n: m.tree for n, m in rng.items()}
            reading.sources["rng"] = ", ".join(rng)
        ckpt = reading.finish(self.name, "accelerate", accelerate_progress(customs, rng, sections))
        ckpt.model = model
        for attr, value in sections.items():
            setattr(ckpt, attr, value)
        for name, member in customs.items():
            ckpt.extra[name] = member.tree
        return ckpt


def accelerate_progress(customs: dict[str, Checkpoint], rng: dict[str, Checkpoint],
                        sections: dict[str, Any]) -> Progress:
    """A registered object's counters when it has them, else the scheduler's update count."""
    for name, member in customs.items():
        if member.progress.known:
            p = member.progress
            p.sources = {k: f"{name} {v}" for k, v in p.sources.items()}
            break
    else:
        p = Progress()
        scheduler = sections.get("scheduler")
        last_epoch = scheduler.get("last_epoch") if isinstance(scheduler, dict) else None
        if isinstance(last_epoch, int) and not isinstance(last_epoch, bool):
            p.global_step = last_epoch
            p.sources["global_step"] = (f"scheduler.bin last_epoch = {last_epoch} (scheduler steps, which equal "
                                        "optimizer updates when the scheduler steps every update)")
        p.notes.append("accelerate stores no epoch: register an object holding the epoch with "
                       "accelerator.register_for_checkpointing to make resumes exact")
    for name, member in rng.items():
        step = member.tree.get("step") if isinstance(member.tree, dict) else None
        if isinstance(step, int):
            p.notes.append(f"{name} step = {step}: micro-batches since the last epoch end")
            break
    return p
