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
from dataclasses import replace
from pathlib import Path
from typing import Any

from ckptkit.core.checkpoint import Checkpoint, Progress, Severity, TensorRef
from ckptkit.core.errors import CkptkitError, NotACheckpointError
from ckptkit.formats.dcp import DcpFormat
from ckptkit.formats.files import read_with
from ckptkit.formats.folder import FolderReading, member_names, subfolders

RANDOM_STATES = re.compile(r"random_states_(\d+)\.pkl$")
CUSTOM = re.compile(r"custom_checkpoint_(\d+)\.pkl$")
SECTIONS = (("optimizer", re.compile(r"optimizer(_\d+)?\.bin$"), "optimizer"),
            ("scheduler", re.compile(r"scheduler(_\d+)?\.bin$"), "scheduler"),
            ("scaler", re.compile(r"scaler\.pt$"), "AMP scaler"))
MODEL = re.compile(r"(model|pytorch_model)(_\d+)?\.(safetensors|bin)$")
# accelerate's save_fsdp_model (also what HF Trainer writes under FSDP): FULL_STATE_DICT
# pytorch_model_fsdp.bin (pytorch_model_fsdp_1.bin for a second model), SHARDED_STATE_DICT a DCP
# folder pytorch_model_fsdp_0/ (_1/...) holding {"model": state_dict}.
FSDP_MODEL = "pytorch_model_fsdp"
FSDP_OPTIMIZER = "optimizer_0"     # save_fsdp_optimizer's DCP folder (SHARDED_STATE_DICT) of the first optimizer
FSDP_MEMBER = re.compile(r"pytorch_model_fsdp(?:_(\d+))?(\.bin)?$")


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
        fsdp = read_fsdp_models(reading, names)
        model.update(fsdp or {})
        if "optimizer" not in sections and FSDP_OPTIMIZER in subfolders(path):
            optimizer = read_fsdp_optimizer(reading, FSDP_OPTIMIZER)
            if optimizer is not None:
                sections["optimizer"] = optimizer
        if not _distributed_layout(path, names):
            _missing_members(reading, names)
        ckpt = reading.finish(self.name, "accelerate", accelerate_progress(customs, rng, sections))
        ckpt.model = model
        for attr, value in sections.items():
            setattr(ckpt, attr, value)
        for name, member in customs.items():
            ckpt.extra[name] = member.tree
        return ckpt


def read_fsdp_models(reading: FolderReading, names: set[str]) -> dict[str, TensorRef] | None:
    """The models accelerate's save_fsdp_model wrote, model i's keys prefixed `pytorch_model_fsdp_{i}.`
    past the first (as model_1.safetensors's are `model_1.`); None when there is none."""
    found = [(m, name) for name in sorted(n for n in names if n.endswith(".bin")) + subfolders(reading.path)
             if (m := FSDP_MEMBER.match(name)) and (m.group(2) is not None) == (name in names)]
    if not found:
        return None
    model: dict[str, TensorRef] = {}
    for match, name in sorted(found, key=lambda mn: int(mn[0].group(1) or 0)):
        index = int(match.group(1) or 0)
        prefix = f"{FSDP_MODEL}_{index}." if index else ""
        if name in names:
            tensors = reading.read_weights_file(name, "model weights (FSDP full state dict)")
        else:
            tensors = _read_sharded_fsdp(reading, name)
            reading.sources["model"] = f"{name}/ (FSDP sharded state dict, torch.distributed.checkpoint)"
        model.update({prefix + k: t for k, t in tensors.items()})
    return model


def _read_sharded_fsdp(reading: FolderReading, folder: str) -> dict[str, TensorRef]:
    dcp = _dcp_member(reading, folder, "FSDP sharded model weights")
    if dcp is None:
        return {}
    saved = dcp.tree.get("model") if isinstance(dcp.tree, dict) else None     # {"model": state_dict}
    return dict(saved) if isinstance(saved, dict) else dict(dcp.model)


def read_fsdp_optimizer(reading: FolderReading, folder: str) -> Any:
    """The optimizer state accelerate's save_fsdp_optimizer wrote with SHARDED_STATE_DICT (also
    what HF Trainer writes under FSDP): the DCP folder `optimizer_{i}/` holding {"optimizer":
    state}, keyed by parameter name as get_optimizer_state_dict makes it; None when it cannot be
    read (said) or holds none."""
    dcp = _dcp_member(reading, folder, "FSDP sharded optimizer state")
    if dcp is None:
        return None
    saved = dcp.tree.get("optimizer") if isinstance(dcp.tree, dict) else None
    if saved is not None:
        reading.sources["optimizer"] = f"{folder}/ (FSDP sharded optimizer state, torch.distributed.checkpoint)"
    return saved


def _dcp_member(reading: FolderReading, folder: str, role: str) -> Checkpoint | None:
    """A DCP folder inside the folder being read, its findings carried over; None (an error finding)
    when it cannot be read."""
    try:
        dcp = read_with(DcpFormat(), reading.path / folder)
    except CkptkitError as exc:
        reading.add_finding("folder.unreadable-member", Severity.ERROR, folder, f"{role} cannot be read: {exc.message}")
        return None
    reading.findings += [replace(f, where=reading.where(f.where)) for f in dcp.findings]
    return dcp


def _indices(names: set[str], pattern: re.Pattern[str], group: int = 1) -> set[int]:
    """The indices of the members `pattern` matches, from its `group`: no suffix is 0, `_1` is 1
    (accelerate's naming)."""
    return {int(m.group(group).lstrip("_")) if m.group(group) else 0 for n in names if (m := pattern.match(n))}


def _distributed_layout(path: Path, names: set[str]) -> bool:
    """Saved under FSDP, DeepSpeed or Megatron-LM: accelerate then writes the model (and the
    optimizer) its own way, as pytorch_model_fsdp*.bin files or as subfolders (pytorch_model_fsdp_0/,
    optimizer_0/, DeepSpeed's pytorch_model/), so no model.safetensors or optimizer.bin is expected."""
    return any(n.startswith(FSDP_MODEL) for n in names) or bool(subfolders(path))


def _missing_members(reading: FolderReading, names: set[str]) -> None:
    """What `Accelerator.load_state` will not find. It loads, for every model, optimizer and
    scheduler the script prepared (and every registered object), the file of that index with no
    existence check, so a missing one raises FileNotFoundError (checked with accelerate 1.15:
    removing optimizer.bin, scheduler.bin, model.safetensors or custom_checkpoint_0.pkl from a
    save_state folder each stops load_state; a missing random_states_0.pkl is only logged)."""
    raises = "Accelerator.load_state raises FileNotFoundError for it"
    models = _indices(names, MODEL, 2)
    for i in sorted(set(range(max(models, default=0) + 1)) - models):
        suffix = "" if i == 0 else f"_{i}"
        reading.add_finding("folder.missing-weights", Severity.ERROR, f"model{suffix}.safetensors",
                            f"no model{suffix}.safetensors or pytorch_model{suffix}.bin: Accelerator.load_state "
                            f"raises FileNotFoundError when it loads the model the script prepared")
    optimizers, schedulers = (_indices(names, pattern) for _, pattern, _ in SECTIONS[:2])
    for kind, found in (("optimizer", optimizers), ("scheduler", schedulers)):
        for i in sorted(set(range(max(found, default=-1) + 1)) - found):
            name = f"{kind}.bin" if i == 0 else f"{kind}_{i}.bin"
            reading.add_finding(f"folder.missing-{kind}", Severity.ERROR, name,
                                f"no {name} though {kind}_{max(found)}.bin is here: save_state writes one per "
                                f"prepared {kind}, so this one was lost; {raises}")
    if schedulers and not optimizers:
        reading.add_finding("folder.missing-optimizer", Severity.ERROR, "optimizer.bin",
                            f"no optimizer.bin though scheduler.bin is here: a scheduler is saved with the optimizer "
                            f"it drives, so the folder lost it; {raises}")
    elif not optimizers:
        reading.add_finding("folder.missing-optimizer", Severity.WARNING, "optimizer.bin",
                            f"no optimizer.bin: when the training script prepares an optimizer, {raises}")
    elif not schedulers and _scheduled(reading):
        reading.add_finding("folder.missing-scheduler", Severity.WARNING, "scheduler.bin",
                            "no scheduler.bin, though an LR scheduler drove the optimizer (its param groups hold "
                            "the scheduler's initial_lr): if the script prepares that scheduler, "
                            "Accelerator.load_state raises FileNotFoundError for it; if it does not, accelerate "
                            "never saved it and a resume restarts the schedule (warmup, decay) from the beginning")
    customs = _indices(names, CUSTOM)
    for i in sorted(set(range(max(customs, default=-1) + 1)) - customs):
        reading.add_finding("folder.missing-member", Severity.ERROR, f"custom_checkpoint_{i}.pkl",
                            f"no custom_checkpoint_{i}.pkl though custom_checkpoint_{max(customs)}.pkl is here: "
                            f"each object registered with register_for_checkpointing has one, so "
                            f"Accelerator.load_state raises for it")
    if not any(RANDOM_STATES.match(n) for n in names):
        reading.add_finding("folder.missing-rng", Severity.INFO, "random_states_0.pkl",
                            "no random_states_*.pkl: load_state goes on without it, so a resume will not "
                            "reproduce the data order and dropout exactly")


def _scheduled(reading: FolderReading) -> bool:
    """Whether an LR scheduler was attached to the optimizer: torch's LRScheduler sets each param
    group's `initial_lr`, which the optimizer's state_dict keeps."""
    tree = reading.tree.get("optimizer.bin")
    groups = tree.get("param_groups") if isinstance(tree, dict) else None
    return isinstance(groups, list) and any(isinstance(g, dict) and "initial_lr" in g for g in groups)


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
